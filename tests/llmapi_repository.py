"""A model repository serving a checkpoint through the LLM API `tensorrt_llm` model, for tests.

Until the repository writer knows the "pytorch" backend, this writes the `tensorrt_llm` model itself: the tensors
of the generated `tensorrt_llm` config (the same contract the proxy speaks), backend python, decoupled, and the two
parameters of the LLM API model (`checkpoint_dir`, `llm_api_options`), with the model's files beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import trtforge.triton
from llmapi_helpers import TRTLLM13_STANDIN
from triton_helpers import loopback_triton
from trtforge.engine import EngineInfo
from trtforge.triton.repository import TENSORRT_LLM, model_configs
from trtforge.triton.server import TritonServer

MODELS_DIR = Path(trtforge.triton.__file__).parent / "models"
MODEL_FILES = (
    MODELS_DIR / "tensorrt_llm_llmapi" / "model.py",
    MODELS_DIR / "tensorrt_llm_llmapi" / "llmapi_sampling.py",
    MODELS_DIR / "common" / "trtllm_contract.py",
)
# What trtforge derives for a small CPU entry (PYTORCH_ENTRY.md's keys).
DEFAULT_OPTIONS: dict[str, Any] = {
    "max_batch_size": 8,
    "max_num_tokens": 512,
    "max_seq_len": 512,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "kv_cache_config": {"free_gpu_memory_fraction": 0.9},
    "guided_decoding_backend": "xgrammar",
    "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8]},
}


def llmapi_engine_info(checkpoint: Path, options: Mapping[str, Any] = DEFAULT_OPTIONS) -> EngineInfo:
    """What serving needs to know of a PyTorch-backend entry whose checkpoint (with tokenizer and chat
    template) is `checkpoint`."""
    return EngineInfo(
        path=checkpoint,
        backend="pytorch",  # type: ignore[arg-type]  (not yet one of EngineBackend's values on main)
        architecture="Qwen3ForCausalLM",
        tp_size=int(options.get("tensor_parallel_size", 1)),
        pp_size=int(options.get("pipeline_parallel_size", 1)),
        max_batch_size=int(options["max_batch_size"]),
        max_seq_len=int(options["max_seq_len"]),
        max_input_len=min(int(options["max_num_tokens"]), int(options["max_seq_len"]) - 1),
        max_num_tokens=int(options["max_num_tokens"]),
        max_beam_width=1,
        quant_algo="NVFP4",
        kv_cache_quant_algo="FP8",
        trtllm_version="1.3.0",
        dtype="bfloat16",
        gather_generation_logits=True,
    )


def _tensorrt_llm_config(engine: EngineInfo, options_path: Path) -> str:
    """The generated `tensorrt_llm` config with backend python and the LLM API model's parameters."""
    reference = dataclasses.replace(engine, backend="reference")
    config = model_config_pb2.ModelConfig()
    text_format.Parse(model_configs({"llmapi": reference})[TENSORRT_LLM], config)
    config.backend = "python"
    config.ClearField("parameters")
    config.parameters["checkpoint_dir"].string_value = str(engine.path.absolute())
    config.parameters["llm_api_options"].string_value = str(options_path.absolute())
    return text_format.MessageToString(config)


def write_llmapi_repository(
    checkpoint: Path, root: Path, options: Mapping[str, Any] = DEFAULT_OPTIONS
) -> tuple[Path, EngineInfo]:
    """`root/repository` with the one `tensorrt_llm` model, and `root/llm_api_options.yaml`."""
    engine = llmapi_engine_info(checkpoint, options)
    options_path = root / "llm_api_options.yaml"
    options_path.write_text(yaml.safe_dump(dict(options), sort_keys=False))
    model_dir = root / "repository" / TENSORRT_LLM
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(_tensorrt_llm_config(engine, options_path))
    for source in MODEL_FILES:
        shutil.copyfile(source, model_dir / "1" / source.name)
    return root / "repository", engine


def standin_environment(monkeypatch: Any, worker_log: Path) -> None:
    """The TensorRT-LLM 1.3 stand-in on PYTHONPATH (which the model adds to its sys.path), its workers' log."""
    monkeypatch.setenv("PYTHONPATH", str(TRTLLM13_STANDIN))
    monkeypatch.setenv("TRTFORGE_STANDIN_WORKER_LOG", str(worker_log))


@contextlib.contextmanager
def running_llmapi_triton(
    checkpoint: Path, root: Path, options: Mapping[str, Any] = DEFAULT_OPTIONS
) -> Iterator[tuple[TritonServer, EngineInfo]]:
    """The embedded tritonserver serving `checkpoint` through the LLM API model (set `standin_environment`
    first); its log in `root`."""
    repository, engine = write_llmapi_repository(checkpoint, root, options)
    with loopback_triton(repository, root) as server:
        yield server, engine
