"""The `tensorrt_llm` contract's request, as TensorRT-LLM LLM API arguments; LLM API log probabilities as the
contract's outputs.

Shipped beside the LLM API model's `model.py` (imported by its file name), so it imports only numpy, the standard
library and the shared contract. Nothing here imports `tensorrt_llm`: `sampling_arguments` returns the keyword
arguments of `SamplingParams` (and of `GuidedDecodingParams` under "guided_decoding"), so it can be tested without
TensorRT-LLM.

- Greedy in the contract (temperature 0, top_k 1, or top_k = top_p = 0: TensorRT-LLM's defaults) is greedy in the
  LLM API: temperature, top_k and top_p all unset. Otherwise top_k/top_p are set only when they restrict (> 0).
- No `end_id`: never stop at EOS (`ignore_eos`), as the engine backend.
- Stop and bad words: one-token words as `stop_token_ids`/`bad_token_ids`; longer ones decoded to text
  (`stop`/`bad`, which the LLM tokenizes again). Stop words stay in the output (`include_stop_str_in_output`), as
  the contract returns a stop word's tokens.
- Log probabilities: `logprobs=0` for the chosen tokens' only; `logprobs=TOP_LOGPROBS` when the request asks for
  `generation_logits`, which this model fills from those top log probabilities (`logits_row`).
- Guides: json → json_object, json_schema → json, regex → regex, ebnf_grammar → grammar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from trtforge.triton.models.common.trtllm_contract import GenerationRequest, RequestError
else:
    from trtllm_contract import GenerationRequest, RequestError

# How many alternatives the LLM API is asked for when a request wants generation logits: OpenAI's most.
TOP_LOGPROBS = 20

_GUIDES = {"json": "json_object", "json_schema": "json", "regex": "regex", "ebnf_grammar": "grammar"}


def _split_words(
    words: list[list[int]], decode: Callable[[list[int]], str] | None, what: str
) -> tuple[list[int], list[str]]:
    """One-token words as ids, longer words as text."""
    ids = [word[0] for word in words if len(word) == 1]
    long_words = [word for word in words if len(word) > 1]
    if long_words and decode is None:
        raise RequestError(
            f"{what} of several tokens need the model's tokenizer, which this LLM does not load"
        )
    return ids, [decode(word) for word in long_words] if decode is not None else []


def sampling_arguments(spec: GenerationRequest, decode: Callable[[list[int]], str] | None) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for one request; raises RequestError for what the LLM API cannot do.

    `decode` turns token ids into text (the LLM's tokenizer), None when the LLM has no tokenizer.
    """
    if spec.embedding_bias is not None:
        raise RequestError("embedding_bias is not supported by the LLM API model")
    if spec.beam_width != 1:
        raise RequestError(f"beam_width {spec.beam_width} is not supported by the LLM API model: only 1")
    sampling = spec.sampling
    args: dict[str, Any] = {
        "max_tokens": spec.max_new_tokens,
        "n": spec.num_return_sequences,
        "detokenize": False,  # the proxy detokenizes; the model sends token ids
        "include_stop_str_in_output": True,
    }
    if spec.end_id is None:
        args.update(end_id=-1, ignore_eos=True)
    else:
        args["end_id"] = spec.end_id
    if spec.pad_id is not None:
        args["pad_id"] = spec.pad_id
    if not sampling.greedy:
        args["temperature"] = sampling.temperature
        args["seed"] = sampling.seed
        if sampling.top_k > 0:
            args["top_k"] = sampling.top_k
        if sampling.top_p > 0:
            args["top_p"] = sampling.top_p
    if sampling.repetition_penalty != 1.0:
        args["repetition_penalty"] = sampling.repetition_penalty
    if sampling.presence_penalty:
        args["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        args["frequency_penalty"] = sampling.frequency_penalty
    if sampling.min_tokens > 0:
        args["min_tokens"] = sampling.min_tokens
    stop_ids, stop_texts = _split_words(spec.stop_words, decode, "stop words")
    if stop_ids:
        args["stop_token_ids"] = stop_ids
    if stop_texts:
        args["stop"] = stop_texts
    bad_ids, bad_texts = _split_words(spec.bad_words, decode, "bad words")
    if bad_ids:
        args["bad_token_ids"] = bad_ids
    if bad_texts:
        args["bad"] = bad_texts
    if spec.return_generation_logits:
        args["logprobs"] = TOP_LOGPROBS
    elif spec.return_log_probs:
        args["logprobs"] = 0
    if spec.guide is not None:
        guide_type, guide = spec.guide
        key = _GUIDES[guide_type]
        args["guided_decoding"] = {key: True if key == "json_object" else guide}
    return args


def _logprob_value(entry: Any) -> float:
    """A `Logprob(logprob, rank)` (or a plain float) as a float."""
    return float(getattr(entry, "logprob", entry))


def chosen_log_probs(tokens: list[int], entries: list[Mapping[int, Any]]) -> list[float]:
    """Each token's own log probability from the LLM API's `logprobs` entries ({token_id: Logprob})."""
    if len(entries) < len(tokens):
        raise RuntimeError(f"the LLM returned log probabilities for {len(entries)} of {len(tokens)} tokens")
    return [_logprob_value(entry[token]) for token, entry in zip(tokens, entries, strict=False)]


def logits_row(entry: Mapping[int, Any], vocab_size: int) -> npt.NDArray[np.float32]:
    """A row of `generation_logits` that a log softmax turns back into the entry's top log probabilities.

    The known tokens keep their log probabilities; the rest of the vocabulary shares the remaining probability
    mass evenly, which is never more than the least likely known token's (each unknown token is at most that
    likely), so the top-k a client reads from the row are the LLM's top-k. The row sums to probability 1, so
    its log softmax is itself.
    """
    known = {
        int(token): _logprob_value(value) for token, value in entry.items() if 0 <= int(token) < vocab_size
    }
    remaining = max(0.0, 1.0 - sum(math.exp(v) for v in known.values()))
    others = vocab_size - len(known)
    fill = math.log(remaining / others) if others and remaining > 0 else -math.inf
    if known and fill > min(known.values()):  # rounding: never rank an unknown token above a known one
        fill = min(known.values())
    row = np.full(vocab_size, fill, dtype=np.float32)
    for token, value in known.items():
        row[token] = value
    return row
