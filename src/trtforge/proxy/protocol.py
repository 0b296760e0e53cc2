"""OpenAI wire models: requests (with their validation) and responses, chunks, usage and the error envelope.

Requests accept unknown fields (kept in `model_extra`, logged by the service and otherwise ignored) as vLLM
does; out-of-range values fail validation and become a 400 envelope.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

UINT64_MAX = 2**64 - 1
INT32_MAX = 2**31 - 1
FP32_MAX = 3.4028234663852886e38
MAX_CHOICES = 128  # n: each choice is its own generation on Triton
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API
MAX_PROMPTS = 256  # completions prompts in one request


def now_s() -> int:
    return int(time.time())


# ---------------------------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """The fields chat and completions requests share."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Integer fields travel as INT32 tensors: bound them so a huge value is a 400, not a wrapped cast.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)  # -1 and 0 both mean "no top-k"
    seed: int | None = Field(default=None, ge=0, le=UINT64_MAX)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=FP32_MAX)
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Refused rather than ignored: a client that biases tokens relies on it.
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias:
            raise ValueError("logit_bias is not supported")
        return bias

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: str
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(content, list):
            for part in content:
                if part.type != "text":
                    raise ValueError(f"content part type `{part.type}` is not supported (text only)")
        return content

    def to_template(self) -> dict[str, Any]:
        """The message as the chat template sees it: text parts joined, extra fields passed through.

        Tool-call arguments arrive as JSON text; templates expect the object (they write it with `tojson`).
        """
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            message["content"] = "".join(p.text or "" for p in self.content)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message["tool_calls"] = [_call_for_template(call) for call in calls]
        return message


def _call_for_template(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call  # not JSON: the template gets the text as sent
    return {**call, "function": {**function, "arguments": arguments}}


class FunctionDefinition(_Request):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    # `schema` would shadow pydantic's own BaseModel.schema.
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: str
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [tool.function.name for tool in self.tools or []]
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice `required` needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names `{self.tool_choice.function.name}`, which is not in tools")
        return self

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """`none` when no tools are offered; OpenAI's default `auto` when they are."""
        if not self.tools:
            return "none"
        return self.tool_choice if self.tool_choice is not None else "auto"

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools the chat template shows the model (none with `tool_choice: none`)."""
        if self.effective_tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools or []]

    @property
    def requested_max_tokens(self) -> int | None:
        # `max_completion_tokens` is the newer name; it wins when both are given.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def requested_top_logprobs(self) -> int | None:
        """None: no logprobs; 0: the chosen tokens' only; k: with k alternatives each."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _bounded(cls, prompt: str | list[Any]) -> str | list[Any]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be empty")
        if isinstance(prompt, list) and len(prompt) > MAX_PROMPTS and not isinstance(prompt[0], int):
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return prompt

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of must equal n (no server-side ranking)")
        if self.echo and self.logprobs is not None:
            raise ValueError(
                "echo with logprobs is not supported (prompt log probabilities need context logits)"
            )
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts: one text or token-id list per entry."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [[int(i) for i in self.prompt]]
        return list(self.prompt)  # type: ignore[arg-type]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def requested_top_logprobs(self) -> int | None:
        return self.logprobs


# --------------------------------------------------------------------------------------------------- responses

FinishReason = Literal["stop", "length", "tool_calls"]


class _Sparse(BaseModel):
    """A model that leaves out its unset (None) fields, as OpenAI's stream deltas do."""

    @model_serializer(mode="wrap")
    def _only_set_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    """`content` is always present (null when the model only called tools); the rest only when set."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _only_set_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k == "content"}


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunctionCall(_Sparse):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Sparse):
    """A piece of a streamed tool call: the first has id, type and name; the rest add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(_Sparse):
    """OpenAI sends only what changed: `{"content": "x"}`, and `{}` with the finish reason."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    """Both the non-streamed response and each streamed chunk (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "trtforge"
    max_model_len: int | None = None  # the context: prompt plus completion (vLLM's name)
    max_input_len: int | None = None  # the longest prompt the engine takes as served (trtforge's)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------------------------------------------ errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
