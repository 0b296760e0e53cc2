"""The TensorRT-LLM 1.3 LLM API stand-in keeps the real contract (../shared/reference/trtllm-pytorch.md): strict
arguments, cumulative outputs with diffs, abort, shutdown, per-request errors, a worker process that ends with it,
and real generation from a real NVFP4 checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llmapi_helpers import TRTLLM13_STANDIN, import_standin, is_running, llm_api_workers
from nvfp4_quant import quantize_nvfp4
from proxy_fixtures import wait_until
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.validate import check_checkpoint

trtllm = import_standin()
from tensorrt_llm import (  # noqa: E402  (the stand-in is importable only once its directory is on sys.path)
    LLM,
    GuidedDecodingParams,
    KvCacheConfig,
    RequestError,
    SamplingParams,
)
from tensorrt_llm._standin.nvfp4 import dequantize  # noqa: E402

PROMPT = "<|im_start|>user\nHello! How are you?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llm(tiny_nvfp4_checkpoint: Path) -> Iterator[Any]:
    with LLM(
        model=str(tiny_nvfp4_checkpoint),
        max_seq_len=256,
        max_num_tokens=128,
        max_batch_size=4,
        kv_cache_config={"free_gpu_memory_fraction": 0.5},
        guided_decoding_backend="xgrammar",
        cuda_graph_config=None,
    ) as running:
        yield running


def _prompt_ids(llm: Any) -> list[int]:
    return list(llm.tokenizer.encode(PROMPT, add_special_tokens=False))


# --- arguments and the package ----------------------------------------------------------------------------------


def test_the_package_is_release_1_3_without_the_tensorrt_backend() -> None:
    assert trtllm.__version__ == "1.3.0"
    with pytest.raises(ModuleNotFoundError):
        __import__("tensorrt_llm._tensorrt_engine")
    env = {**os.environ, "PYTHONPATH": str(TRTLLM13_STANDIN)}
    bench = subprocess.run(
        [sys.executable, "-m", "tensorrt_llm.commands.bench", "--model", "m", "build"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bench.returncode == 2 and "No such command 'build'" in bench.stderr
    version = subprocess.run(
        [sys.executable, "-c", "import tensorrt_llm; print(tensorrt_llm.__version__)"],
        env={**env, "TRTFORGE_STANDIN_TRTLLM_VERSION": "1.4.1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.splitlines()[-1] == "1.4.1"


def test_unknown_arguments_and_the_tensorrt_backend_are_errors_before_any_worker(
    tiny_nvfp4_checkpoint: Path,
) -> None:
    with pytest.raises(ValueError, match="max_batch_sizes"):
        LLM(model=str(tiny_nvfp4_checkpoint), max_batch_sizes=4)
    with pytest.raises(ValueError, match="free_gpu_mem_fraction"):
        LLM(model=str(tiny_nvfp4_checkpoint), kv_cache_config={"free_gpu_mem_fraction": 0.5})
    with pytest.raises(ValueError, match="backend='tensorrt' is no longer supported"):
        LLM(model=str(tiny_nvfp4_checkpoint), backend="tensorrt")
    with pytest.raises(ValueError, match="not a local directory"):
        LLM(model="nvidia/Qwen3-32B-NVFP4")
    assert llm_api_workers(os.getpid()) == []
    assert KvCacheConfig().free_gpu_memory_fraction == 0.9


def test_sampling_params_are_keyword_only_with_the_real_defaults_and_checks() -> None:
    params = SamplingParams()
    assert params.max_tokens == 32 and params.n == 1 and params.best_of == 1
    assert params.temperature is None and params.top_p is None and params.top_k is None
    assert SamplingParams(end_id=7).pad_id == 7
    assert SamplingParams(logprobs=True).logprobs == 1
    with pytest.raises(TypeError):
        SamplingParams(16)  # type: ignore[misc]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="does not allow multiple returns"):
        SamplingParams(n=2)  # greedy
    with pytest.raises(ValueError, match="Only one guide"):
        GuidedDecodingParams(json_object=True, regex="a+")._validate()


# --- generation -------------------------------------------------------------------------------------------------


def test_nvfp4_round_trip_keeps_weights_within_the_fp4_grid() -> None:
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    parts = quantize_nvfp4(weight)
    assert parts["weight"].dtype == torch.uint8 and list(parts["weight"].shape) == [32, 32]
    assert parts["weight_scale"].dtype == torch.float8_e4m3fn and list(parts["weight_scale"].shape) == [32, 4]
    restored = dequantize(parts["weight"], parts["weight_scale"], parts["weight_scale_2"])
    # E2M1's coarsest step is 2 (between 4 and 6) in units of the block scale (amax / 6, which FP8 E4M3 rounds
    # by at most 1/16): no value is off by more than that scale.
    block_scale = weight.abs().reshape(32, 4, 16).amax(-1).repeat_interleave(16, dim=1) / 6
    assert bool(((restored - weight).abs() <= block_scale * (1 + 1 / 16)).all())
    assert float((restored - weight).abs().mean()) < float(block_scale.mean()) / 2


def test_the_nvfp4_fixture_is_a_valid_export(tiny_nvfp4_checkpoint: Path) -> None:
    info = inspect_checkpoint(tiny_nvfp4_checkpoint)
    assert info.quantization is not None and info.quantization.quant_algo == "NVFP4"
    assert check_checkpoint(info) == []


def test_streamed_diffs_add_up_to_the_whole_greedy_answer(llm: Any) -> None:
    params = SamplingParams(max_tokens=40, logprobs=0)
    whole = llm.generate_async(_prompt_ids(llm), params).result()
    out = whole.outputs[0]
    assert whole.finished and out.finish_reason == "stop" and 1 < len(out.token_ids) < 40
    assert llm.tokenizer.eos_token_id not in out.token_ids  # the end token is not part of the output
    assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True) and out.text.strip()
    assert len(out.logprobs) == len(out.token_ids)
    assert all(set(entry) == {token} for entry, token in zip(out.logprobs, out.token_ids, strict=True))

    async def stream() -> tuple[list[list[int]], list[str], Any]:
        result = llm.generate_async(_prompt_ids(llm), params, streaming=True)
        diffs, texts = [], []
        async for step in result:
            diffs.append(step.outputs[0].token_ids_diff)
            texts.append(step.outputs[0].text_diff)
        return diffs, texts, result

    diffs, texts, streamed = asyncio.run(stream())
    assert [t for diff in diffs for t in diff] == out.token_ids == streamed.outputs[0].token_ids
    assert len(diffs) == len(out.token_ids) + 1 and diffs[-1] == []  # one token a step; the end adds none
    assert "".join(texts) == out.text
    assert streamed.outputs[0].cumulative_logprob == pytest.approx(out.cumulative_logprob)


def test_max_tokens_ends_with_length_and_top_logprobs_carry_ranks(llm: Any) -> None:
    result = llm.generate_async(_prompt_ids(llm), SamplingParams(max_tokens=3, logprobs=3)).result()
    out = result.outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3
    for entry, token in zip(out.logprobs, out.token_ids, strict=True):
        assert entry[token].rank == 1  # greedy: the chosen token is the most likely one
        ranked = sorted(entry.values(), key=lambda lp: lp.rank or 0)
        assert [lp.rank for lp in ranked] == [1, 2, 3]
        assert [lp.logprob for lp in ranked] == sorted((lp.logprob for lp in ranked), reverse=True)
        assert sum(torch.tensor([lp.logprob for lp in ranked]).exp()) <= 1.0 + 1e-5


def test_a_stop_string_ends_the_output_and_is_cut_unless_asked_for(llm: Any) -> None:
    first = llm.generate_async(_prompt_ids(llm), SamplingParams(max_tokens=40)).result().outputs[0]
    stop_token = first.token_ids[2]
    stop = llm.tokenizer.decode([stop_token])
    cut = llm.generate_async(_prompt_ids(llm), SamplingParams(max_tokens=40, stop=stop)).result().outputs[0]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    assert cut.token_ids == first.token_ids[: first.token_ids.index(stop_token)]
    kept_params = SamplingParams(max_tokens=40, stop_token_ids=[stop_token], include_stop_str_in_output=True)
    kept = llm.generate_async(_prompt_ids(llm), kept_params).result().outputs[0]
    assert kept.stop_reason == stop_token and kept.token_ids[-1] == stop_token


def test_n_samples_differ_and_are_repeatable_with_a_seed(llm: Any) -> None:
    params = SamplingParams(max_tokens=12, n=2, temperature=1.0, top_k=50, seed=5)
    first = llm.generate_async(_prompt_ids(llm), params).result()
    again = llm.generate_async(_prompt_ids(llm), params).result()
    assert [o.index for o in first.outputs] == [0, 1]
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in again.outputs]
    assert first.outputs[0].token_ids != first.outputs[1].token_ids


def test_guided_json_follows_the_schema(llm: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    params = SamplingParams(max_tokens=60, guided_decoding=GuidedDecodingParams(json=json.dumps(schema)))
    out = llm.generate_async(_prompt_ids(llm), params).result().outputs[0]
    assert isinstance(json.loads(out.text)["city"], str)


def test_per_request_errors(llm: Any) -> None:
    with pytest.raises(RequestError, match="max_num_tokens"):
        llm.generate_async(list(range(10, 139)), SamplingParams(max_tokens=4))
    bad_schema = GuidedDecodingParams(json='{"type": "nonsense"}')
    failing = llm.generate_async(_prompt_ids(llm), SamplingParams(max_tokens=4, guided_decoding=bad_schema))
    with pytest.raises(RequestError):
        failing.result()
    # The executor goes on serving.
    assert llm.generate_async(_prompt_ids(llm), SamplingParams(max_tokens=2)).result().outputs[0].token_ids


def test_guided_requests_need_a_guided_decoding_backend(tiny_float_checkpoint: Path) -> None:
    with LLM(model=str(tiny_float_checkpoint), max_seq_len=128) as plain:
        guided = SamplingParams(guided_decoding=GuidedDecodingParams(json_object=True))
        with pytest.raises(RequestError, match="guided_decoding_backend"):
            plain.generate_async(_prompt_ids(plain), guided)


def test_abort_ends_a_streamed_request_as_cancelled(llm: Any) -> None:
    async def abort_after_two() -> Any:
        result = llm.generate_async(
            _prompt_ids(llm), SamplingParams(max_tokens=200, ignore_eos=True), streaming=True
        )
        steps = 0
        async for step in result:
            steps += 1
            if steps == 2:
                step.abort()
        return result

    result = asyncio.run(abort_after_two())
    out = result.outputs[0]
    assert result.finished and result.aborted() and out.finish_reason == "cancelled"
    assert 2 <= len(out.token_ids) < 200


def test_shutdown_ends_every_worker_and_refuses_new_requests(tiny_float_checkpoint: Path) -> None:
    others = set(llm_api_workers(os.getpid()))  # the module's own LLM
    llm = LLM(model=str(tiny_float_checkpoint), max_seq_len=128, tensor_parallel_size=2)
    workers = set(llm_api_workers(os.getpid())) - others
    assert len(workers) == 2  # one per rank, as the real executor's MPI pool
    pending = llm.generate_async(
        _prompt_ids(llm), SamplingParams(max_tokens=100, ignore_eos=True), streaming=True
    )
    llm.shutdown()
    assert not any(is_running(pid) for pid in workers)
    with pytest.raises(RuntimeError, match="LLM is shutting down"):
        llm.generate_async(_prompt_ids(llm))
    with pytest.raises(RuntimeError):
        pending.result(timeout=60)
    llm.shutdown()  # idempotent


def test_a_worker_ends_when_its_llm_process_dies(tiny_float_checkpoint: Path, tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from tensorrt_llm import LLM\n"
        f"llm = LLM(model={str(tiny_float_checkpoint)!r}, max_seq_len=64)\n"
        "print('ready', flush=True)\n"
        "os._exit(0)\n"  # no shutdown, no atexit: the worker's pipe just closes
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(TRTLLM13_STANDIN), "TRTFORGE_STANDIN_WORKER_LOG": str(log)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)
    lines = log.read_text().splitlines()
    pid = int(lines[0].split("pid=")[1].split()[0])
    wait_until(
        lambda: not is_running(pid), what="the orphaned worker to exit"
    )  # re-parented: not ours to reap
    assert any("its LLM is gone" in line for line in log.read_text().splitlines())
