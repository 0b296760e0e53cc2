"""The generated `tensorrt_llm` config against the `tensorrtllm` backend's contract (trtforge.triton.contract),
for TP 1 and TP 2 NVFP4 engines, and the proxy's request tensors against the generated inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_helpers import write_engine_dir
from trtforge.engine import XGRAMMAR_TOKENIZER_INFO, read_engine
from trtforge.errors import TritonError, UsageError
from trtforge.proxy.backend import GenerationRequest, SamplingParams, build_infer_request
from trtforge.serve_options import ServeOptions, merge_serve_options
from trtforge.triton.contract import (
    BACKEND_PARAMETERS,
    TRTLLM_INPUTS,
    check_tensorrt_llm_config,
)
from trtforge.triton.repository import model_configs

REQUIRED_PARAMETERS = {"gpt_model_type", "gpt_model_path", "tokenizer_dir", "xgrammar_tokenizer_info_path",
                       "guided_decoding_backend"}  # fmt: skip


def _config(engine, options: ServeOptions | None = None) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(model_configs({"engine": engine}, {"engine": options})["tensorrt_llm"], config)
    return config


def _params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.mark.parametrize("tp_size", [1, 2])
def test_nvfp4_engine_config_meets_the_backend_contract(tmp_path: Path, tp_size: int) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt", tp_size=tp_size))
    assert engine.world_size == tp_size and engine.dtype == "bfloat16"
    config = _config(engine)
    assert check_tensorrt_llm_config(config, engine_dtype="bfloat16") == []
    assert config.backend == "tensorrtllm"

    params = _params(config)
    assert set(params) >= REQUIRED_PARAMETERS
    assert {name for name, fact in BACKEND_PARAMETERS.items() if fact.required} == REQUIRED_PARAMETERS
    assert params["tokenizer_dir"] == str(engine.path.absolute())
    # No tokenizer info in the entry: guided decoding is off, by empty strings (absence would not load).
    assert params["xgrammar_tokenizer_info_path"] == "" and params["guided_decoding_backend"] == ""

    inputs = {tensor.name: tensor for tensor in config.input}
    assert inputs["prompt_embedding_table"].data_type == model_config_pb2.TYPE_BF16
    assert inputs["lora_weights"].data_type == model_config_pb2.TYPE_FP16  # fixed, whatever the engine
    outputs = {tensor.name: tensor for tensor in config.output}
    assert outputs["generation_logits"].data_type == model_config_pb2.TYPE_FP32  # logits_dtype default


def test_dtype_dependent_tensors_follow_the_engine(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "fp16", backend="tensorrt", dtype="float16"))
    config = _config(engine)
    assert {t.name: t for t in config.input}["prompt_embedding_table"].data_type == model_config_pb2.TYPE_FP16
    # The same config is wrong for a bfloat16 engine: the checker says which tensor and both sides.
    problems = check_tensorrt_llm_config(config, engine_dtype="bfloat16")
    assert problems == [
        "input 'prompt_embedding_table' has data_type TYPE_FP16, the backend wants TYPE_BF16",
    ]
    odd = read_engine(write_engine_dir(tmp_path / "odd", backend="tensorrt", dtype="int4"))
    with pytest.raises(TritonError, match="unknown engine dtype 'int4'"):
        model_configs({"odd": odd})


def test_guided_decoding_is_on_when_the_entry_has_the_tokenizer_info(tmp_path: Path) -> None:
    path = write_engine_dir(tmp_path / "engine", backend="tensorrt")
    (path / XGRAMMAR_TOKENIZER_INFO).write_text("{}")
    params = _params(_config(read_engine(path)))
    assert params["xgrammar_tokenizer_info_path"] == str((path / XGRAMMAR_TOKENIZER_INFO).absolute())
    assert params["guided_decoding_backend"] == "xgrammar"


def test_the_checker_catches_each_way_a_config_fails_to_load(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt"))
    good = _config(engine)

    def broken(edit) -> list[str]:
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(good)
        edit(config)
        return check_tensorrt_llm_config(config, engine_dtype="bfloat16")

    def drop_param(name):
        return lambda config: config.parameters.pop(name)

    def set_param(name, value):
        return lambda config: config.parameters[name].__setattr__("string_value", value)

    assert broken(drop_param("tokenizer_dir")) == [
        "parameter 'tokenizer_dir' is missing: the backend reads it without a fallback and the model would not load"
    ]
    assert broken(set_param("enable_kv_cache_reuse", "yes")) == [
        "parameter enable_kv_cache_reuse='yes': not a boolean (true/false)"
    ]
    assert broken(set_param("guided_decoding_backend", "outlines")) == [
        "parameter guided_decoding_backend='outlines': not one of , xgrammar"
    ]
    assert broken(set_param("kv_cache_free_gpu_mem_fraction", "${kv_cache_free_gpu_mem_fraction}")) == [
        "parameter 'kv_cache_free_gpu_mem_fraction' holds an unfilled placeholder '${kv_cache_free_gpu_mem_fraction}'"
    ]
    assert broken(set_param("gpt_model_path", "relative/engine")) == [
        "parameter gpt_model_path='relative/engine': must be an absolute path"
    ]
    assert broken(set_param("worker_path", "/x")) == [
        "parameter 'worker_path' is no longer supported by the backend"
    ]
    assert broken(lambda c: setattr(c.model_transaction_policy, "decoupled", False)) == [
        "model_transaction_policy.decoupled must be true: streaming requests need it"
    ]

    def unscalar(config):
        for tensor in config.input:
            if tensor.name == "end_id":
                tensor.ClearField("reshape")

    assert broken(unscalar) == ["input 'end_id' needs a `reshape: { shape: [ ] }`"]

    def rename(config):
        for tensor in config.input:
            if tensor.name == "min_tokens":
                tensor.name = "min_length"

    assert broken(rename) == ["input 'min_length' is not a tensor the backend knows"]


def test_serve_options_reach_parameters_and_model_fields(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt", tp_size=2))
    options = merge_serve_options(
        ServeOptions(kv_cache_free_gpu_mem_fraction=0.8, max_queue_size=64),
        {
            "max_tokens_in_paged_kv_cache": "65536",
            "enable_chunked_context": "true",
            "multi_block_mode": "false",
            "cuda_graph_mode": "true",
            "normalize_log_probs": "false",
            "kv_cache_host_memory_bytes": "1000000",
            "gpu_device_ids": "2,3",
            "stats_check_period_ms": "500",
            "iter_stats_max_iterations": "10",
            "request_stats_max_iterations": "5",
            "batch_scheduler_policy": "max_utilization",
            "max_queue_delay_microseconds": "100",
        },
    )
    config = _config(engine, options)
    assert check_tensorrt_llm_config(config, engine_dtype="bfloat16") == []
    params = _params(config)
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.8"  # from the base (catalogue) options
    assert params["max_tokens_in_paged_kv_cache"] == "65536"
    assert params["enable_chunked_context"] == "true"
    assert params["multi_block_mode"] == "false"
    assert params["cuda_graph_mode"] == "true"
    assert params["normalize_log_probs"] == "false"
    assert params["kv_cache_host_memory_bytes"] == "1000000"
    assert params["gpu_device_ids"] == "2,3"
    assert params["stats_check_period_ms"] == "500"
    assert params["iter_stats_max_iterations"] == "10"
    assert params["request_stats_max_iterations"] == "5"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert config.dynamic_batching.max_queue_delay_microseconds == 100

    with pytest.raises(
        UsageError, match=r"gpu_device_ids '0' lists 1 GPU\(s\); the engine needs one per rank \(2\)"
    ):
        model_configs({"engine": engine}, {"engine": ServeOptions(gpu_device_ids="0")})


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ({"kv_cache_fraction": "0.5"}, "unknown serve option 'kv_cache_fraction'"),
        ({"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy: Input should be 'guaranteed_no_evict'"),
        ({"enable_kv_cache_reuse": "maybe"}, "enable_kv_cache_reuse: Input should be a valid boolean"),
        ({"max_queue_size": "-1"}, "max_queue_size: Input should be greater than or equal to 0"),
        ({"gpu_device_ids": "0;x"}, "gpu_device_ids: must be comma-separated GPU indices"),
    ],
)
def test_invalid_serve_options_are_one_line_errors(pair: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        merge_serve_options(None, pair)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_proxy_request_tensors_are_generated_inputs_with_matching_dtypes(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt"))
    inputs = {tensor.name: tensor for tensor in _config(engine).input}
    sampling = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, seed=7, presence_penalty=0.1, frequency_penalty=0.2,
        repetition_penalty=1.1, min_tokens=2,
    )  # fmt: skip
    request = build_infer_request(
        "tensorrt_llm",
        GenerationRequest(
            request_id="r",
            prompt_ids=(1, 2, 3),
            max_tokens=8,
            end_id=5,
            pad_id=0,
            sampling=sampling,
            guide=("json_schema", '{"type": "object"}'),
        ),
    )
    sent = {tensor.name: tensor for tensor in request.inputs}
    assert len(sent) >= 17  # every optional field set: the whole request side is covered
    for name, tensor in sent.items():
        assert name in inputs, f"the proxy sends {name!r}, which the tensorrt_llm config does not declare"
        declared = model_config_pb2.DataType.Name(inputs[name].data_type).removeprefix("TYPE_")
        declared = {"STRING": "BYTES"}.get(declared, declared)  # TYPE_STRING travels as BYTES
        assert tensor.datatype == declared, name
        # Batch dimension first, then the declared dims (-1 matches anything).
        dims = list(inputs[name].dims)
        assert len(tensor.shape) == 1 + len(dims) and tensor.shape[0] == 1, name
        assert all(d in (-1, s) for d, s in zip(dims, tensor.shape[1:], strict=True)), name
    contract = {fact.name for fact in TRTLLM_INPUTS}
    assert set(sent) <= contract
