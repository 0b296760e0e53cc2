"""`SamplingParams` and `GuidedDecodingParams` as in TensorRT-LLM (keyword-only dataclasses, the real defaults).

Validation follows the real `_validate`: temperature ≥ 0, 0 ≤ top_p ≤ 1, top_k ≥ 0, best_of ≥ n, n > 1 with greedy
decoding only under `TLLM_ALLOW_N_GREEDY_DECODING`, at most one guide. `_setup(tokenizer)` fills end_id/pad_id
from the tokenizer and turns stop strings into token sequences, as the LLM does before submitting a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """One guide: a JSON schema (`json`, a str or dict), a regex, an EBNF `grammar`, `json_object` or a
    `structural_tag` (xgrammar only)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def _validate(self) -> None:
        count = sum(1 for f in fields(self) if getattr(self, f.name) not in (None, False))
        if count > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {count}.")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    embedding_bias: Any = None
    logits_processor: Any = None
    apply_batched_logits_processor: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    min_p: float | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_encoder_output: bool = False
    return_perf_metrics: bool = False
    additional_model_outputs: list[str] | None = None
    guided_decoding: GuidedDecodingParams | None = None
    # Filled by `_setup`: every stop and bad word as (what it is reported as, its token ids).
    _stop_words: list[tuple[str | int, list[int]]] = field(default_factory=list, repr=False)
    _bad_words: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        if self.best_of is None:
            self.best_of = self.n
        if isinstance(self.logprobs, bool):
            self.logprobs = int(self.logprobs)
        if isinstance(self.prompt_logprobs, bool):
            self.prompt_logprobs = int(self.prompt_logprobs)
        self._validate()

    def _validate(self) -> None:
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(
                f"truncate_prompt_tokens must be >= 1, got truncate_prompt_tokens={self.truncate_prompt_tokens}"
            )
        if (
            self.best_of is not None
            and self.best_of > 1
            and self._greedy_decoding
            and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING")
        ):
            raise ValueError(
                f"Greedy decoding in the LLM API does not allow multiple returns. Please set to best_of=1, "
                f"got best_of={self.best_of}. Please set to best_of=1 or set an environment variable "
                "TLLM_ALLOW_N_GREEDY_DECODING=1 to allow best_of > 1 under the greedy decoding."
            )
        if self.guided_decoding is not None:
            self.guided_decoding._validate()

    @property
    def _greedy_decoding(self) -> bool:
        """All of temperature, top_k and top_p unset means greedy; so do temperature 0, top_k 1 and top_p 0."""
        if self.use_beam_search:
            return False
        unset = self.temperature is None and self.top_k is None and self.top_p is None
        return unset or self.temperature == 0.0 or self.top_k == 1 or self.top_p == 0.0

    def _setup(self, tokenizer: Any) -> SamplingParams:
        """What the LLM does before it submits: end/pad ids from the tokenizer, stop/bad strings as tokens."""
        if self.end_id is None:
            if tokenizer is None:
                raise ValueError("tokenizer is required to reset end_id if it is None")
            self.end_id = tokenizer.eos_token_id
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        elif self.pad_id is None:
            self.pad_id = self.end_id
        self._stop_words = [(token, [token]) for token in self.stop_token_ids or []]
        for text in _strings(self.stop):
            if tokenizer is None:
                raise ValueError("tokenizer is required to tokenize stop strings")
            self._stop_words.append((text, tokenizer.encode(text, add_special_tokens=False)))
        self._bad_words = [[token] for token in self.bad_token_ids or []]
        for text in _strings(self.bad):
            if tokenizer is None:
                raise ValueError("tokenizer is required to tokenize bad words")
            self._bad_words.append(tokenizer.encode(text, add_special_tokens=False))
        return self


def _strings(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
