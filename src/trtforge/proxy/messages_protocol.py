"""Anthropic Messages API wire models: the request (with its validation), the Message object, its content blocks,
the stream events and Anthropic's error envelope.

Requests accept unknown fields (`cache_control`, `metadata`, `service_tier`, `container`, ... are kept in
`model_extra` and ignored), as the chat models do, except what this server cannot honour: server tools (a
versioned tool `type` such as `web_search_20250305`), image and document blocks, `tool_choice` that forces a
tool while thinking is on. Those fail validation with a message naming the field, so a client never mistakes a
silently ignored option for one that worked.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from trtforge.proxy.protocol import INT32_MAX


class _Request(BaseModel):
    # Clients replay content blocks verbatim (`cache_control`, `citations`, ...): extra keys pass.
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------------ content blocks


class TextBlockParam(_Request):
    type: Literal["text"]
    text: str


class ToolUseBlockParam(_Request):
    """A tool call of an earlier assistant turn (replayed)."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


_TEXT_BLOCKS: TypeAdapter[list[TextBlockParam]] = TypeAdapter(list[TextBlockParam])


def _blocks_or_text(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A `str | list[...]` field validated by its actual shape only, so that a refusal names the real problem
    (not also "Input should be a valid string")."""
    return _TEXT_BLOCKS.validate_python(value) if isinstance(value, list) else handler(value)


class ToolResultBlockParam(_Request):
    """The result of a tool call, sent back in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam] | None = None
    is_error: bool | None = None

    _content = field_validator("content", mode="wrap")(_blocks_or_text)

    @property
    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(block.text for block in self.content)


class ThinkingBlockParam(_Request):
    """The thinking of an earlier assistant turn (replayed); its text goes back to the template."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(_Request):
    """Thinking another server encrypted: nothing a template can show, so it is dropped."""

    type: Literal["redacted_thinking"]
    data: str = ""


_BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(kind) if kind in _BLOCK_TYPES else None


ContentBlockParam = Annotated[
    Annotated[TextBlockParam, Tag("text")]
    | Annotated[ToolUseBlockParam, Tag("tool_use")]
    | Annotated[ToolResultBlockParam, Tag("tool_result")]
    | Annotated[ThinkingBlockParam, Tag("thinking")]
    | Annotated[RedactedThinkingBlockParam, Tag("redacted_thinking")],
    Discriminator(
        _block_type,
        custom_error_type="invalid_block",
        custom_error_message="content block type is not supported (text, tool_use, tool_result and thinking "
        "blocks only)",
    ),
]
_BLOCKS: TypeAdapter[list[ContentBlockParam]] = TypeAdapter(list[ContentBlockParam])


class MessageParam(_Request):
    """One turn of the conversation (`system` turns are the system prompt in place, as 2.x SDKs allow)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]

    @field_validator("content", mode="wrap")
    @classmethod
    def _content(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _BLOCKS.validate_python(value) if isinstance(value, list) else handler(value)

    @property
    def blocks(self) -> list[Any]:
        if isinstance(self.content, str):
            return [TextBlockParam(type="text", text=self.content)]
        return list(self.content)


# ----------------------------------------------------------------------------------------- request fields


class ToolParam(_Request):
    """A client tool (`custom`, the one kind served: server tools run on Anthropic's servers)."""

    type: str | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None

    @field_validator("type")
    @classmethod
    def _custom_only(cls, kind: str | None) -> str | None:
        if kind not in (None, "custom"):
            raise ValueError(
                f"server tool `{kind}` is not supported (client tools with an input_schema only)"
            )
        return kind


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # accepted; one reply may still call several tools

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice `tool` needs a `name`")
        return self


class ThinkingConfig(_Request):
    type: Literal["enabled", "disabled", "adaptive"]
    # Anthropic asks for at least 1024; any positive budget is honoured here (small models think briefly).
    budget_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)

    @model_validator(mode="after")
    def _budget_given(self) -> ThinkingConfig:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking `enabled` needs `budget_tokens`")
        return self

    @property
    def on(self) -> bool:
        return self.type != "disabled"


class OutputFormat(_Request):
    type: Literal["json_schema"]
    # `schema` would shadow pydantic's own BaseModel.schema.
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    effort: str | None = None  # ignored: the template has no effort levels
    format: OutputFormat | None = None


class ConversationFields(_Request):
    """What both `POST /v1/messages` and `POST /v1/messages/count_tokens` render into the prompt."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None

    _system = field_validator("system", mode="wrap")(_blocks_or_text)

    @model_validator(mode="after")
    def _consistent(self) -> ConversationFields:
        names = [tool.name for tool in self.tools or []]
        choice = self.tool_choice
        if choice is not None and choice.type == "any" and not names:
            raise ValueError("tool_choice `any` needs tools")
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names `{choice.name}`, which is not in tools")
        if self.thinking_on and choice is not None and choice.type in ("any", "tool"):
            raise ValueError("thinking may not be enabled when tool_choice forces tool use")
        return self

    @property
    def thinking_on(self) -> bool:
        """Anthropic's default is no thinking: only `thinking` enabled (or adaptive) turns it on."""
        return self.thinking is not None and self.thinking.on

    @property
    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n".join(block.text for block in self.system) or None


class MessagesRequest(ConversationFields):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = None
    # The 2.x SDK no longer has these in `create()`; clients send them in the body (`extra_body`).
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    stream: bool = False
    metadata: dict[str, Any] | None = None  # accepted and ignored (`user_id` is the client's own)

    @model_validator(mode="after")
    def _budget_below_max_tokens(self) -> MessagesRequest:
        budget = self.thinking.budget_tokens if self.thinking is not None else None
        if self.thinking_on and budget is not None and budget >= self.max_tokens:
            raise ValueError(
                f"thinking.budget_tokens ({budget}) must be less than max_tokens ({self.max_tokens})"
            )
        return self

    @property
    def thinking_budget(self) -> int | None:
        """The cap on thinking tokens (None: no thinking, or no cap)."""
        return self.thinking.budget_tokens if self.thinking_on and self.thinking is not None else None


class CountTokensRequest(ConversationFields):
    """`POST /v1/messages/count_tokens`."""


class TokenCount(BaseModel):
    input_tokens: int


# -------------------------------------------------------------------------------------------- the Message


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Required by the SDK's model; the thinking is plain text here, so there is nothing to sign.
    signature: str = ""


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageObject(BaseModel):
    """The Message object: every field Anthropic's typed clients read."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


# ----------------------------------------------------------------------------------------------- errors


class AnthropicErrorInfo(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """`{"type": "error", "error": {"type", "message"}}`: the envelope of every error on `/v1/messages*`."""

    type: Literal["error"] = "error"
    error: AnthropicErrorInfo
