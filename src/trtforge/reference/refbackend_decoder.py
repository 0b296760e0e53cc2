"""Decoding for the reference `tensorrt_llm` model: transformers runs the model; token choice follows TensorRT-LLM.

Shipped beside the reference model's `model.py` (Triton python backend); imports only torch, transformers, its
siblings `trtllm_contract` and `refbackend_guides`, and the standard library.
Greedy unless sampling is asked for (see `SamplingSettings.greedy`); otherwise top-k/top-p sampling seeded by
`seed` (default 0, so repeatable). Penalties, bad words, `min_tokens`, the embedding bias and a guide's grammar
mask the logits before the choice.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:  # annotations only; inside Triton these are sibling files (see trtllm_contract)
    from trtforge.reference.refbackend_guides import Guides
    from trtforge.triton.models.common.trtllm_contract import GenerationRequest

# Below this many parameters a CPU decoding step runs on one thread (see `intra_op_threads`).
SMALL_MODEL_PARAMETERS = 50_000_000


@dataclass
class Sequence:
    """One request being decoded: its sender, its cache and what it has produced so far."""

    request: Any
    sender: Any
    request_id: str
    spec: GenerationRequest
    max_new_tokens: int
    cache: Any = None
    next_logits: torch.Tensor | None = None
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    logits: list[npt.NDArray[np.float32]] = field(
        default_factory=list
    )  # raw logits per token, when asked for
    generator: torch.Generator | None = None
    last_cancel_check: float = 0.0
    stopped: bool = False
    matcher: Any = None  # xgrammar.GrammarMatcher when the request is guided


def intra_op_threads(parameters: int, device_type: str) -> int | None:
    """How many intra-op threads torch should use to decode a model of `parameters` on `device_type`.

    None leaves torch's default (one per core). A small model on a CPU gets one: its decoding step (one token,
    batch 1) is a few small matmuls, so more threads only add their synchronisation, and on a busy host each
    step waits until every OpenMP worker gets a CPU. Measured with the tiny engine on 2 busy cores: 5-7 ms per
    step on one thread, 80-130 ms on two (see docs/benchmarks.md).
    """
    if device_type == "cpu" and parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return None


class Decoder:
    """Runs the transformers model: prefill, one decoding step, token choice. Used from one thread only."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM, DynamicCache

        self.device = device
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # transformers' decorated PreTrainedModel.to() is typed as taking the model itself, not a device.
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        threads = intra_op_threads(sum(p.numel() for p in self.model.parameters()), device.type)
        if threads is not None:
            torch.set_num_threads(threads)  # this process (the model's Triton stub) decodes only this model
        self.vocab_size = int(self.model.config.vocab_size)
        # transformers 5.x renamed forward's `past_key_values` to `cache`; use whichever this version has.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._new_cache = DynamicCache

    def make_cache(self) -> Any:
        try:
            return self._new_cache(config=self.model.config)
        except TypeError:
            return self._new_cache()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Feed `ids` after what `cache` holds; returns the float32 logits of the last position."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        outputs = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
        )
        logits: torch.Tensor = outputs.logits[0, -1].float()
        return logits

    def choose(self, seq: Sequence, guides: Guides | None = None) -> tuple[int, float]:
        """Pick the next token from `seq.next_logits`; returns it with its log probability."""
        spec, sampling = seq.spec, seq.spec.sampling
        if seq.next_logits is None:
            raise RuntimeError(f"request {seq.request_id}: a token chosen before the prompt was read")
        logits = seq.next_logits.clone()
        if spec.embedding_bias is not None and spec.embedding_bias.size == logits.numel():
            logits += torch.from_numpy(spec.embedding_bias).to(logits.device)
        self._penalise(logits, seq)
        for word in spec.bad_words:
            if len(word) == 1 or seq.tokens[-(len(word) - 1) :] == word[:-1]:
                logits[word[-1]] = -math.inf
        if (
            spec.end_id is not None
            and len(seq.tokens) < sampling.min_tokens
            and 0 <= spec.end_id < logits.numel()
        ):
            logits[spec.end_id] = -math.inf
        if seq.matcher is not None and guides is not None:
            guides.mask(seq.matcher, logits)
        if sampling.greedy:
            log_probs = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logits))
            return token, float(log_probs[token])
        logits = logits / max(sampling.temperature, 1e-5)
        if sampling.top_k > 0:
            kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
            logits[logits < kth] = -math.inf
        if 0.0 < sampling.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(sorted_logits, dim=-1) > sampling.top_p
            logits[order[drop]] = -math.inf
        log_probs = torch.log_softmax(logits, dim=-1)
        if seq.generator is None:
            seq.generator = torch.Generator(device=logits.device).manual_seed(sampling.seed)
        token = int(torch.multinomial(log_probs.exp(), 1, generator=seq.generator))
        return token, float(log_probs[token])

    @staticmethod
    def _penalise(logits: torch.Tensor, seq: Sequence) -> None:
        """Repetition penalty over prompt and output; presence and frequency penalties over the output."""
        sampling = seq.spec.sampling
        if sampling.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.spec.input_ids) | set(seq.tokens)), device=logits.device)
            seen = seen[seen < logits.numel()]
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
            )
        if seq.tokens and (sampling.presence_penalty or sampling.frequency_penalty):
            counts = torch.bincount(torch.tensor(seq.tokens, device=logits.device), minlength=logits.numel())[
                : logits.numel()
            ].float()
            logits -= sampling.frequency_penalty * counts + sampling.presence_penalty * (counts > 0).float()
