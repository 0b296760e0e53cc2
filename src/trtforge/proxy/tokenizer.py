"""The engine's tokenizer as the proxy uses it: chat template in, token ids out, and a fast decoder back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtforge.errors import InvalidEngineError
from trtforge.proxy.errors import InvalidRequestError

# Arguments of `apply_chat_template` that the proxy sets itself; a client's `chat_template_kwargs` cannot
# replace them (the rest, e.g. `enable_thinking`, go through to the template).
_RESERVED_TEMPLATE_ARGS = frozenset({"conversation", "tools", "tokenize", "return_dict", "return_tensors"})


class ProxyTokenizer:
    """Wraps a Hugging Face fast tokenizer loaded from the engine directory.

    Args:
        hf_tokenizer: a `transformers` fast tokenizer (it has `backend_tokenizer`).
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        self._hf = hf_tokenizer
        # The raw `tokenizers.Tokenizer`: decoding through it skips the transformers wrapper's overhead.
        self.decoder = hf_tokenizer.backend_tokenizer
        eos = hf_tokenizer.eos_token_id
        if eos is None:
            raise InvalidEngineError("the engine's tokenizer has no eos token; generation could never stop")
        self.eos_id: int = int(eos)
        pad = hf_tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id

    @classmethod
    def load(cls, path: Path) -> ProxyTokenizer:
        """Load the tokenizer (and its `chat_template.jinja`) saved beside the engine, without the hub."""
        from transformers import AutoTokenizer  # heavy import, only when a proxy starts

        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidEngineError(f"{path}: cannot load the tokenizer: {exc}") from None
        if not hasattr(hf, "backend_tokenizer"):
            raise InvalidEngineError(f"{path}: the tokenizer is not a fast (tokenizers) tokenizer")
        return cls(hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._hf, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        """Ids of a raw completions prompt, with the special tokens the tokenizer adds (e.g. BOS)."""
        return list(self._hf.encode(text, add_special_tokens=True))

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Ids of the chat prompt: the template with `add_generation_prompt=True`, plus the client's kwargs."""
        return self.encode_rendered(
            self.render_chat_text(messages, tools=tools, template_kwargs=template_kwargs)
        )

    def encode_rendered(self, text: str) -> list[int]:
        """Ids of a rendered chat prompt: the template already wrote every special token (BOS included)."""
        return list(self._hf.encode(text, add_special_tokens=False))

    def render_chat_text(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The chat prompt as text (see `render_chat`)."""
        if not self.has_chat_template:
            raise InvalidRequestError(
                "this model has no chat template; use /v1/completions", code="no_chat_template"
            )
        kwargs = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_ARGS}
        kwargs.setdefault("add_generation_prompt", True)
        try:
            text = self._hf.apply_chat_template(list(messages), tools=tools, tokenize=False, **kwargs)
        except Exception as exc:  # jinja raises its own types, and templates call raise_exception()
            raise InvalidRequestError(
                f"the chat template rejected the messages: {exc}", param="messages"
            ) from None
        return str(text)
