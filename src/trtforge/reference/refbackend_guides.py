"""Guided decoding for the reference `tensorrt_llm` model: xgrammar grammars, the grammar backend TensorRT-LLM uses.

Shipped beside the reference model's `model.py` (Triton python backend); imports only torch, transformers,
xgrammar (at the first guided request), the `trtllm_contract` sibling and the standard library.
Guide types: json | json_schema | regex | ebnf_grammar. Each step masks the tokens the grammar does not allow;
the scheduler ends a generation when its grammar is complete. A guide xgrammar cannot compile is the client's
fault (a `RequestError`); a missing xgrammar is the deployment's (a plain error).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

# Type-checked against the package's copy; inside Triton the contract is a sibling file (see trtllm_contract).
if TYPE_CHECKING:
    from trtforge.triton.models.common.trtllm_contract import RequestError
else:
    from trtllm_contract import RequestError

_MAX_CACHED_GRAMMARS = 32


class Guides:
    """Compiles guided-decoding grammars with xgrammar for one tokenizer (loaded at the first guided request).

    Args:
        tokenizer_dir: the directory of the engine's Hugging Face tokenizer.
        vocab_size: the model's vocabulary size (its logits' width, which may exceed the tokenizer's).
    """

    def __init__(self, tokenizer_dir: Path, vocab_size: int) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.vocab_size = vocab_size
        self._compiler: Any = None
        self._compiled: dict[tuple[str, str], Any] = {}

    def _grammar_compiler(self) -> Any:
        if self._compiler is None:
            try:
                import xgrammar
            except ImportError:  # the deployment's fault, not the client's: a server error
                raise RuntimeError(
                    "guided decoding needs the xgrammar package, which is not installed"
                ) from None
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
            info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        return self._compiler

    def matcher(self, guide_type: str, guide: str) -> Any:
        """A fresh matcher for one request; the compiled grammar is cached."""
        import xgrammar

        key = (guide_type, guide)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiler = self._grammar_compiler()
            try:
                if guide_type == "json":
                    compiled = compiler.compile_builtin_json_grammar()
                elif guide_type == "json_schema":
                    # Compact JSON: with free whitespace a weak model can pad forever instead of finishing.
                    compiled = compiler.compile_json_schema(guide, any_whitespace=False)
                elif guide_type == "regex":
                    compiled = compiler.compile_regex(guide)
                else:
                    compiled = compiler.compile_grammar(guide)
            except Exception as exc:  # xgrammar raises several types for a bad guide
                raise RequestError(
                    f"invalid guided_decoding_guide ({guide_type}): {_grammar_error_text(str(exc))}"
                ) from None
            if len(self._compiled) >= _MAX_CACHED_GRAMMARS:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compiled
        return xgrammar.GrammarMatcher(compiled)

    def mask(self, matcher: Any, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar does not allow next to -inf."""
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits.view(1, -1), bitmask.to(logits.device))


# xgrammar prefixes its C++ errors with a time and a source location: `[15:47:23] /project/cpp/x.cc:83: `.
_XGRAMMAR_LOCATION = re.compile(r"(?:\[[0-9:]+\]\s*)?\S+\.(?:cc|cpp|h):\d+:\s*")


def _grammar_error_text(message: str) -> str:
    """xgrammar's reason for refusing a guide, without its source location, on one line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return _XGRAMMAR_LOCATION.sub("", text).strip() or "xgrammar cannot compile it"
