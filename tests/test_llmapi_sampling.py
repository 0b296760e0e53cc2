"""The LLM API model's mapping of a `tensorrt_llm` request to LLM API arguments, checked against the 1.3
stand-in's SamplingParams (whose validation is the real one's), and its generation_logits rows."""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import trtforge.triton
from llmapi_helpers import import_standin
from trtforge.triton.distribution import find_tritonserver

MODELS = Path(trtforge.triton.__file__).parent / "models"


def _import(name: str, directory: Path) -> ModuleType:
    """A model's sibling module imported by its file name, as Triton's stub does from the model's directory."""
    utils_dir = find_tritonserver().backend_dir / "python"  # triton_python_backend_utils
    for path in (utils_dir, directory):
        if str(path) not in sys.path:
            sys.path.append(str(path))
    return importlib.import_module(name)


contract = _import("trtllm_contract", MODELS / "common")
sampling = _import("llmapi_sampling", MODELS / "tensorrt_llm_llmapi")
trtllm = import_standin()


def _spec(**changes: Any) -> Any:
    base = contract.GenerationRequest(
        input_ids=[1, 2, 3],
        max_new_tokens=16,
        end_id=9,
        streaming=True,
        exclude_input_in_output=True,
        return_log_probs=False,
        return_generation_logits=False,
        return_num_input_tokens=False,
        return_num_output_tokens=False,
        sampling=contract.SamplingSettings(),
        stop_words=[],
        bad_words=[],
        embedding_bias=None,
        pad_id=0,
    )
    return dataclasses.replace(base, **changes)


def _params(spec: Any, decode: Any = None) -> Any:
    arguments = sampling.sampling_arguments(spec, decode)
    guide = arguments.pop("guided_decoding", None)
    if guide is not None:
        arguments["guided_decoding"] = trtllm.GuidedDecodingParams(**guide)
    return trtllm.SamplingParams(**arguments)


def test_the_engine_backends_greedy_defaults_are_llm_api_greedy() -> None:
    for settings in (
        contract.SamplingSettings(),  # top_k = top_p = 0
        contract.SamplingSettings(temperature=0.0, top_k=40),
        contract.SamplingSettings(top_k=1, top_p=0.9),
    ):
        params = _params(_spec(sampling=settings))
        assert params._greedy_decoding
        assert (params.temperature, params.top_k, params.top_p) == (None, None, None)
    sampled = _params(_spec(sampling=contract.SamplingSettings(temperature=0.7, top_p=0.9, seed=4)))
    assert not sampled._greedy_decoding
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.seed) == (0.7, None, 0.9, 4)


def test_end_pad_limits_and_penalties() -> None:
    params = _params(_spec(sampling=contract.SamplingSettings(repetition_penalty=1.1, min_tokens=2)))
    assert (params.end_id, params.pad_id, params.max_tokens, params.ignore_eos) == (9, 0, 16, False)
    assert (params.repetition_penalty, params.min_tokens, params.presence_penalty) == (1.1, 2, None)
    assert params.detokenize is False
    never = _params(_spec(end_id=None))
    assert never.ignore_eos and never.end_id == -1


def test_stop_and_bad_words_split_into_ids_and_text() -> None:
    decoded = {(4, 5): "ab", (6, 7, 8): "cde"}
    params = _params(
        _spec(stop_words=[[3], [4, 5]], bad_words=[[6, 7, 8], [2]]), decode=lambda ids: decoded[tuple(ids)]
    )
    assert (params.stop_token_ids, params.stop, params.include_stop_str_in_output) == ([3], ["ab"], True)
    assert (params.bad_token_ids, params.bad) == ([2], ["cde"])
    with pytest.raises(contract.RequestError, match="tokenizer"):
        sampling.sampling_arguments(_spec(stop_words=[[4, 5]]), None)


def test_log_probabilities_and_sequences() -> None:
    assert _params(_spec()).logprobs is None
    assert _params(_spec(return_log_probs=True)).logprobs == 0
    assert _params(_spec(return_generation_logits=True)).logprobs == sampling.TOP_LOGPROBS
    sampled = contract.SamplingSettings(temperature=1.0, top_k=20)
    assert _params(_spec(num_return_sequences=3, sampling=sampled)).n == 3
    with pytest.raises(ValueError, match="multiple returns"):  # greedy n > 1, as TensorRT-LLM refuses it
        _params(_spec(num_return_sequences=2))


def test_guides_and_refusals() -> None:
    cases = {
        ("json", ""): {"json_object": True},
        ("json_schema", '{"type": "object"}'): {"json": '{"type": "object"}'},
        ("regex", "a+"): {"regex": "a+"},
        ("ebnf_grammar", 'root ::= "x"'): {"grammar": 'root ::= "x"'},
    }
    for guide, expected in cases.items():
        assert sampling.sampling_arguments(_spec(guide=guide), None)["guided_decoding"] == expected
        _params(_spec(guide=guide))  # a valid GuidedDecodingParams
    with pytest.raises(contract.RequestError, match="embedding_bias"):
        sampling.sampling_arguments(_spec(embedding_bias=np.zeros(4, dtype=np.float32)), None)
    with pytest.raises(contract.RequestError, match="beam_width 2"):
        sampling.sampling_arguments(_spec(beam_width=2), None)


def test_a_logits_row_gives_back_the_top_log_probabilities() -> None:
    Logprob = trtllm.executor.Logprob
    entry = {7: Logprob(math.log(0.5), 1), 3: Logprob(math.log(0.2), 2), 11: Logprob(math.log(0.1), 3)}
    row = sampling.logits_row(entry, 50).astype(np.float64)
    log_softmax = row - np.log(np.exp(row).sum())
    best = np.argsort(-log_softmax, kind="stable")[:3].tolist()
    assert best == [7, 3, 11]
    assert np.allclose(log_softmax[best], [math.log(0.5), math.log(0.2), math.log(0.1)], atol=1e-6)
    assert sampling.chosen_log_probs([3, 7], [entry, entry]) == [entry[3].logprob, entry[7].logprob]
