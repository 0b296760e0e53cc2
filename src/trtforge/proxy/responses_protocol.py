"""OpenAI Responses API wire models: the request (with its validation), the Response object, its output items
and the streaming events.

Requests accept unknown fields (kept in `model_extra`, logged and ignored), as the chat models do, except the
fields this server cannot honour (`background`, `conversation`, `prompt`, `moderation`, built-in tools and
their `tool_choice`s, `include` entries, `truncation: auto`, ...): those fail validation with a message
naming the field, so a client never mistakes a silently ignored option for one that worked.
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
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from trtforge.proxy.protocol import INT32_MAX

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class _Request(BaseModel):
    # Clients replay output items verbatim (with `status`, `annotations`, `logprobs: null`, ...): extra keys pass.
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------------ input items


class InputTextPart(_Request):
    """A text part of an input message (`input_text`), or of replayed assistant history (`output_text`)."""

    type: str
    text: str = ""

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind not in ("input_text", "output_text", "text", "refusal"):
            raise ValueError(f"content part type `{kind}` is not supported (input_text and output_text only)")
        return kind


_PARTS: TypeAdapter[list[InputTextPart]] = TypeAdapter(list[InputTextPart])


def _parts_or_text(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A `str | list[...]` field validated by its actual shape only, so that a refusal names the real problem
    (not also "Input should be a valid string")."""
    return _PARTS.validate_python(value) if isinstance(value, list) else handler(value)


class InputMessage(_Request):
    """A message: the easy form (`{role, content}`) or the typed one (`type: "message"`, content parts)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputTextPart]
    id: str | None = None

    _content = field_validator("content", mode="wrap")(_parts_or_text)

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if part.type != "refusal")


class FunctionCallItem(_Request):
    """A function call of an earlier turn (replayed output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Request):
    """The result of a function call, sent back for the next turn."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputTextPart]
    id: str | None = None

    _output = field_validator("output", mode="wrap")(_parts_or_text)

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class SummaryPart(_Request):
    type: str = "summary_text"
    text: str = ""


class ReasoningTextPart(_Request):
    type: str = "reasoning_text"
    text: str = ""


class ReasoningItem(_Request):
    """The reasoning of an earlier turn (replayed output); its text goes back to the template."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryPart] = Field(default_factory=list)
    content: list[ReasoningTextPart] | None = None
    encrypted_content: str | None = None

    @field_validator("encrypted_content")
    @classmethod
    def _no_encrypted(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("encrypted reasoning is not supported: replay the reasoning item's content")
        return value

    @property
    def text(self) -> str:
        parts = self.content if self.content else self.summary
        return "".join(part.text for part in parts)


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _item_type(value: Any) -> str | None:
    """The tag of an input item: its `type`, or `message` for the easy form without one."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in _ITEM_TYPES:
        return str(kind)
    return None


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(
        _item_type,
        custom_error_type="invalid_item",
        custom_error_message="input item type is not supported (message, function_call, function_call_output "
        "and reasoning items only)",
    ),
]


# ----------------------------------------------------------------------------------------- request fields


class FunctionTool(_Request):
    """A function tool, the one tool type served (built-in tools need OpenAI's servers)."""

    type: str
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("type")
    @classmethod
    def _function_only(cls, kind: str) -> str:
        if kind != "function":
            raise ValueError(f"tool type `{kind}` is not supported (function tools only)")
        return kind


class NamedFunctionChoice(_Request):
    type: Literal["function"]
    name: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    # `schema` would shadow pydantic's own BaseModel.schema.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("text.format `json_schema` needs a `schema`")
        return self


class TextConfig(_Request):
    format: TextFormat | None = None
    verbosity: str | None = None  # ignored: the model's verbosity is its own


class ReasoningConfig(_Request):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: str | None = None  # ignored: no summaries are generated
    generate_summary: str | None = None

    @property
    def thinking(self) -> bool | None:
        """The Qwen3 `enable_thinking` template switch this asks for (None: the template's default)."""
        if self.effort is None:
            return None
        return self.effort not in ("none", "minimal")


_INPUT_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])
# Fields this server cannot honour, each refused (when set) with its reason; a field validator each, so that the
# 400 names the field.
_REFUSED = {
    "background": "responses run in the foreground",
    "conversation": "use previous_response_id or send the items",
    "prompt": "stored prompts live on OpenAI's servers",
    "include": "no include entries are available (no logprobs, no encrypted reasoning)",
    "top_logprobs": "log probabilities are not returned on this route",
    "moderation": "no moderation runs here",
}


class ResponsesRequest(_Request):
    """`POST /v1/responses`."""

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Refused when set (see `_supported`): accepted by the model so that the refusal names them.
    background: bool | None = None
    include: list[str] | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    moderation: Any = None

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"metadata keys are at most {MAX_METADATA_KEY_CHARS} characters, values at most "
                    f"{MAX_METADATA_VALUE_CHARS}"
                )
        return metadata

    @field_validator("input", mode="wrap")
    @classmethod
    def _some_input(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return _INPUT_ITEMS.validate_python(value) if isinstance(value, list) else handler(value)

    @field_validator("tool_choice", mode="wrap")
    @classmethod
    def _function_choice_only(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # `allowed_tools` and the built-in tools' choices: one message naming the type, not the union's two.
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                f"tool_choice type `{value.get('type')}` is not supported "
                '(`auto`, `none`, `required` or a function: {"type": "function", "name": …})'
            )
        return handler(value)

    @field_validator(*_REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, False, 0, [], {}):
            raise ValueError(f"{info.field_name} is not supported: {_REFUSED[str(info.field_name)]}")
        return value

    @field_validator("truncation")
    @classmethod
    def _no_auto_truncation(cls, value: str | None) -> str | None:
        if value == "auto":
            raise ValueError("truncation `auto` is not supported: an input over the context is a 400")
        return value

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        names = [tool.name for tool in self.tools or []]
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice `required` needs tools")
        if isinstance(self.tool_choice, NamedFunctionChoice) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names `{self.tool_choice.name}`, which is not in tools")
        return self

    @property
    def effective_tool_choice(self) -> str | NamedFunctionChoice:
        if not self.tools:
            return "none"
        return self.tool_choice if self.tool_choice is not None else "auto"


# ------------------------------------------------------------------------------------------- the Response


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class MessageOutput(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCallOutput(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class ReasoningOutput(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    status: ItemStatus


OutputItem = Annotated[MessageOutput | FunctionCallOutput | ReasoningOutput, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


class ResponseObject(BaseModel):
    """The Response object: every field OpenAI's typed clients read, null where unset."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    store: bool = True
    background: bool = False
    user: str | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool = False
