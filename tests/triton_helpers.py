"""Test-only helpers for the triton tests: engine directories with a small real tokenizer, a tritonserver on free
loopback ports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import trtforge.triton
from conftest import free_port
from trtforge.engine import BENCH_PLUGIN_CONFIG
from trtforge.triton.distribution import find_tritonserver
from trtforge.triton.server import TritonServer

CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée, naïve façade, smörgåsbord.",
    "日本語のテキストと絵文字 🚀✨ も少し。",
    "stop here. stop now! never stop",
]


def write_tokenizer(dest: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (like Qwen's), eos `<|im_end|>`, pad `<|endoftext|>`, saved in `dest`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(str(dest))
    return fast


def write_engine_dir(
    dest: Path,
    *,
    backend: str,
    max_batch_size: int = 4,
    max_beam_width: int = 1,
    tp_size: int = 1,
    dtype: str = "bfloat16",
    version: str = "test",
    plugin_config: dict[str, object] | None = None,
) -> Path:
    """An engine directory `trtforge.engine.read_engine` accepts: a TensorRT one (fake rank files), a
    reference one (`hf_model/`) or a PyTorch entry (its facts, a checkpoint config, LLM API arguments; no
    weights), with a real tokenizer. Its build_config is what `trtllm-bench build` writes (max_input_len 1024,
    its plugin_config, or `plugin_config` given)."""
    dest.mkdir(parents=True, exist_ok=True)
    if backend == "pytorch":
        return _write_pytorch_entry(dest, max_batch_size=max_batch_size, tp_size=tp_size, version=version)
    config = {
        "version": version,
        "pretrained_config": {
            "architecture": "Qwen3ForCausalLM",
            "dtype": dtype,
            "mapping": {"world_size": tp_size, "tp_size": tp_size, "pp_size": 1},
            "quantization": {"quant_algo": "NVFP4"},
        },
        "build_config": {
            "max_batch_size": max_batch_size,
            "max_seq_len": 256,
            "max_input_len": 1024,
            "max_num_tokens": 128,
            "max_beam_width": max_beam_width,
            "plugin_config": dict(BENCH_PLUGIN_CONFIG) if plugin_config is None else plugin_config,
        },
    }
    (dest / "config.json").write_text(json.dumps(config))
    if backend == "tensorrt":
        for rank in range(tp_size):
            (dest / f"rank{rank}.engine").write_bytes(b"not a real engine")
    else:
        (dest / "hf_model").mkdir(exist_ok=True)
    write_tokenizer(dest)
    return dest


def _write_pytorch_entry(dest: Path, *, max_batch_size: int, tp_size: int, version: str) -> Path:
    (dest / "checkpoint").mkdir(exist_ok=True)
    (dest / "checkpoint" / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    options = {"max_batch_size": max_batch_size, "max_seq_len": 256, "tensor_parallel_size": tp_size}
    (dest / "llm_api_options.yaml").write_text("".join(f"{key}: {value}\n" for key, value in options.items()))
    facts = {
        "backend": "pytorch",
        "trtllm_version": "1.3.0" if version == "test" else version,
        "architecture": "Qwen3ForCausalLM",
        "quant_algo": "NVFP4",
        "tp_size": tp_size,
        "max_batch_size": max_batch_size,
        "max_seq_len": 256,
        "max_num_tokens": 256,
    }
    (dest / "llmapi_entry.json").write_text(json.dumps(facts))
    write_tokenizer(dest)
    return dest


def load_bundled_model(name: str) -> ModuleType:
    """Import our preprocessing/postprocessing `model.py` outside Triton (its pure functions are testable)."""
    utils_dir = find_tritonserver().backend_dir / "python"
    if str(utils_dir) not in sys.path:
        sys.path.append(str(utils_dir))  # triton_python_backend_utils
    path = Path(trtforge.triton.__file__).parent / "models" / name / "model.py"
    spec = importlib.util.spec_from_file_location(f"trtforge_test_{name}_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loopback_triton(repository: Path, log_dir: Path) -> TritonServer:
    """A (not yet started) tritonserver for `repository` on free 127.0.0.1 ports, logging to
    `log_dir/tritonserver.log`; use it as a context manager (started and ready inside, stopped after)."""
    return TritonServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=log_dir / "tritonserver.log",
    )
