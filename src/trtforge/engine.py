"""What an engine directory is, and how to read one.

An engine directory has the layout `trtllm-bench build` leaves in `<workspace>/<model>/tp_<tp>_pp_<pp>/`:

    <engine>/
        config.json              TensorRT-LLM engine config: {"version", "pretrained_config", "build_config"}
        rank0.engine ...         one serialized TensorRT engine per rank (world_size = tp × pp)
        tokenizer.json, tokenizer_config.json, ...   tokenizer files saved beside the engine
        chat_template.jinja      the checkpoint's chat template (copied by trtforge)
        trtforge.json            trtforge's manifest (only in store entries)

A *reference* engine (the built-in `tiny`, served by the CPU reference backend) has the same files except that
the rank files are replaced by a Hugging Face model directory `hf_model/` (config.json + model.safetensors).

A *PyTorch* entry (TensorRT-LLM's LLM API, no engine build) has no engine config at its top; it is the checkpoint
itself plus the arguments to load it with (docs/serving.md):

    <entry>/
        checkpoint/              the checkpoint's files (weights hard-linked from it when possible)
        llm_api_options.yaml     the LLM API arguments (`trtllm-serve --extra_llm_api_options` takes it as is)
        llmapi_entry.json        trtforge's facts about it: backend, TensorRT-LLM version, model shape, limits
        tokenizer files, chat_template.jinja, xgrammar_tokenizer_info.json, trtforge.json   as above
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trtforge.errors import InvalidEngineError
from trtforge.prompt_limit import (
    BUILD_CONFIG_MAX_INPUT_LEN,
    RuntimeLimits,
    engine_runtime_limits,
    llm_api_prompt_limit,
)
from trtforge.untrusted import read_bounded, read_json_object

ENGINE_CONFIG = "config.json"
MANIFEST = "trtforge.json"
REFERENCE_MODEL_DIR = "hf_model"
CHAT_TEMPLATE = "chat_template.jinja"
# The tokenizer's files, taken from the checkpoint into the engine directory (with the chat template) for
# serving; one of TOKENIZER_REQUIRED makes a loadable tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer.model", "vocab.json")
# xgrammar's view of the tokenizer (vocabulary, type, stop ids), written at build for guided decoding.
XGRAMMAR_TOKENIZER_INFO = "xgrammar_tokenizer_info.json"

# The PyTorch entry's files (see the module docstring).
CHECKPOINT_DIR = "checkpoint"
LLM_API_OPTIONS = "llm_api_options.yaml"
LLMAPI_ENTRY = "llmapi_entry.json"
LLMAPI_ENTRY_LIMIT = 1 << 20

EngineBackend = Literal["tensorrt", "reference", "pytorch"]

# The `plugin_config` fields the C++ runtime requires and the values `trtllm-bench build` gives them (context
# FMHA, packed input, a paged KV cache, paged context FMHA): what its prompt limit depends on.
BENCH_PLUGIN_CONFIG: dict[str, Any] = {
    "gpt_attention_plugin": "auto",
    "remove_input_padding": True,
    "paged_kv_cache": True,
    "tokens_per_block": 32,
    "context_fmha": True,
    "use_paged_context_fmha": True,
    "multiple_profiles": True,
    "lora_plugin": None,
}


def rank_file_name(rank: int) -> str:
    return f"rank{rank}.engine"


def is_engine_config(config: object) -> TypeGuard[dict[str, Any]]:
    """A parsed config.json is an engine config when it has `pretrained_config` and `build_config`."""
    return (
        isinstance(config, dict)
        and isinstance(config.get("pretrained_config"), dict)
        and isinstance(config.get("build_config"), dict)
    )


def write_reference_engine_config(
    dest: Path,
    *,
    version: str,
    architecture: str,
    shape: dict[str, Any],
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    gather_generation_logits: bool = False,
) -> None:
    """Write `config.json` of a reference engine: one rank, float32, unquantized, the entry's build limits.

    Its build_config is what `trtllm-bench build` writes for the same sizes (`max_input_len` left at
    BuildConfig's default, the attention plugins trtllm-bench enables), so its prompt limit is a real engine's.

    Args:
        version: the generator's version (it feeds the store's content hash).
        shape: the model's `pretrained_config` dimensions (vocab_size, hidden_size, ...), in output order.
        gather_generation_logits: whether the engine returns generation logits (top log probabilities).
    """
    build_config: dict[str, Any] = {
        "max_input_len": min(BUILD_CONFIG_MAX_INPUT_LEN, max_seq_len),
        "max_seq_len": max_seq_len,
        "max_batch_size": max_batch_size,
        "max_beam_width": 1,
        "max_num_tokens": max_num_tokens,
        "gather_context_logits": False,
        "gather_generation_logits": gather_generation_logits,
        "plugin_config": dict(BENCH_PLUGIN_CONFIG),
    }
    engine_config = {
        "version": version,
        "pretrained_config": {
            "architecture": architecture,
            "dtype": "float32",
            **shape,
            "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
            "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        },
        "build_config": build_config,
    }
    (dest / ENGINE_CONFIG).write_text(json.dumps(engine_config, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class EngineInfo:
    """The facts about an engine directory that serving needs."""

    path: Path
    backend: EngineBackend
    architecture: str
    tp_size: int
    pp_size: int
    max_batch_size: int
    max_seq_len: int
    max_input_len: int
    max_num_tokens: int
    max_beam_width: int
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    trtllm_version: str | None
    dtype: str = "float16"  # pretrained_config.dtype: the activations' type, e.g. "bfloat16"
    logits_dtype: str = "float32"  # pretrained_config.logits_dtype: context/generation logits' type
    gather_generation_logits: bool = False  # the engine can return `generation_logits`
    # plugin_config's attention settings, which decide the runtime's prompt limit (`trtforge.prompt_limit`).
    context_fmha: bool = False
    packed_input: bool = False
    paged_kv_cache: bool = False
    paged_context_fmha: bool = False

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def runtime_limits(self) -> RuntimeLimits:
        return RuntimeLimits(
            max_seq_len=self.max_seq_len,
            max_num_tokens=self.max_num_tokens,
            max_input_len=self.max_input_len,
            context_fmha=self.context_fmha,
            packed_input=self.packed_input,
            paged_kv_cache=self.paged_kv_cache,
            paged_context_fmha=self.paged_context_fmha,
        )

    def chunked_context(self, requested: bool | None) -> bool:
        """Whether the engine is served with chunked context.

        `requested` is the serve option `enable_chunked_context`; unset (None), trtforge turns it on wherever
        the engine supports it, so a 16k context takes 16k prompts. PyTorch entries never have it: they are
        prepared without the LLM API's chunked prefill.
        """
        if self.backend == "pytorch":
            return False
        return self.runtime_limits.chunked_context_possible if requested is None else requested

    def prompt_limit(self, enable_chunked_context: bool | None = None) -> int:
        """The longest prompt the runtime accepts when served with `enable_chunked_context` (see
        `chunked_context`): the one number the proxy, `/v1/models`, `plan` and `inspect` report."""
        return self.runtime_limits.prompt_limit(chunked_context=self.chunked_context(enable_chunked_context))

    @property
    def reference_model_dir(self) -> Path:
        return self.path / REFERENCE_MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        """A PyTorch entry's checkpoint (what `tensorrt_llm.LLM(model=...)` loads)."""
        return self.path / CHECKPOINT_DIR

    @property
    def llm_api_options_path(self) -> Path:
        """A PyTorch entry's LLM API arguments (YAML, TorchLlmArgs field names, no `model`)."""
        return self.path / LLM_API_OPTIONS

    @property
    def tokenizer_dir(self) -> Path:
        return self.path


def read_engine_config(path: Path) -> dict[str, Any]:
    """Parse `<path>/config.json` and check it is an engine config."""
    config_path = path / ENGINE_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise InvalidEngineError(f"{path}: no {ENGINE_CONFIG}: not an engine directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEngineError(f"{config_path}: unreadable engine config: {exc}") from None
    except RecursionError:
        raise InvalidEngineError(f"{config_path}: unreadable engine config: nested too deeply") from None
    if not is_engine_config(config):
        raise InvalidEngineError(
            f"{config_path}: not a TensorRT-LLM engine config (needs pretrained_config and build_config)"
        )
    return config


def is_engine_dir(path: Path) -> bool:
    """Whether `path` looks like an engine directory of any backend (an engine config, or a PyTorch entry)."""
    if os.path.lexists(path / LLMAPI_ENTRY):
        return True
    try:
        return is_engine_config(read_json_object(path / ENGINE_CONFIG, error=InvalidEngineError))
    except InvalidEngineError:
        return False


def read_engine(path: Path) -> EngineInfo:
    """Read an engine directory, checking world size against its rank files (or reference model, or checkpoint)."""
    path = Path(path)
    if os.path.lexists(path / LLMAPI_ENTRY):
        return _read_pytorch_entry(path)
    config = read_engine_config(path)
    pretrained = config["pretrained_config"]
    build = config["build_config"]
    mapping = pretrained.get("mapping") or {}
    quant = pretrained.get("quantization") or {}
    tp = int(mapping.get("tp_size", 1))
    pp = int(mapping.get("pp_size", 1))
    world = int(mapping.get("world_size", tp * pp))
    if world != tp * pp:
        raise InvalidEngineError(f"{path / ENGINE_CONFIG}: world_size {world} != tp_size {tp} × pp_size {pp}")

    backend: EngineBackend
    if (path / REFERENCE_MODEL_DIR).is_dir() and not (path / rank_file_name(0)).exists():
        backend = "reference"
    else:
        backend = "tensorrt"
        missing = [rank_file_name(r) for r in range(world) if not (path / rank_file_name(r)).is_file()]
        if missing:
            raise InvalidEngineError(f"{path}: missing {', '.join(missing)} (world_size {world})")

    try:
        limits = engine_runtime_limits(config)
    except ValueError as exc:  # an untrusted config's odd size: one line naming the field
        raise InvalidEngineError(f"{path / ENGINE_CONFIG}: {exc}") from None
    return EngineInfo(
        path=path,
        backend=backend,
        architecture=str(pretrained.get("architecture", "unknown")),
        tp_size=tp,
        pp_size=pp,
        max_batch_size=int(build.get("max_batch_size", 1)),
        max_seq_len=limits.max_seq_len,
        max_input_len=limits.max_input_len,
        max_num_tokens=limits.max_num_tokens,
        max_beam_width=int(build.get("max_beam_width", 1)),
        quant_algo=quant.get("quant_algo"),
        kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
        trtllm_version=config.get("version"),
        dtype=str(pretrained.get("dtype") or "float16"),
        logits_dtype=str(pretrained.get("logits_dtype") or "float32"),
        # trtllm-build's --gather_all_token_logits implies the generation logits.
        gather_generation_logits=bool(
            build.get("gather_generation_logits") or build.get("gather_all_token_logits")
        ),
        context_fmha=limits.context_fmha,
        packed_input=limits.packed_input,
        paged_kv_cache=limits.paged_kv_cache,
        paged_context_fmha=limits.paged_context_fmha,
    )


def enable_generation_logits(path: Path) -> None:
    """Set `build_config.gather_generation_logits` in the engine config at `path` (a fresh build's).

    `trtllm-bench build` has no option for it, and the C++ runtime reads it from config.json when it loads the
    engine, as a switch of its own (it keeps each step's logits for `generation_logits`); the Triton
    `tensorrtllm` backend has no executor parameter that could turn it on instead (docs/serving.md).
    """
    config = read_engine_config(path)
    config["build_config"]["gather_generation_logits"] = True
    (path / ENGINE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


class LlmapiEntryFacts(BaseModel):
    """`llmapi_entry.json`: what trtforge knows about a PyTorch entry without loading its checkpoint."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    backend: Literal["pytorch"] = "pytorch"
    trtllm_version: str
    architecture: str
    dtype: str = "bfloat16"
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    tp_size: int = Field(default=1, ge=1)
    pp_size: int = Field(default=1, ge=1)
    max_batch_size: int = Field(ge=1)
    max_seq_len: int = Field(ge=2)
    max_num_tokens: int = Field(ge=1)
    # The PyTorch sampler computes log probabilities itself: no build option is needed for them.
    gather_generation_logits: bool = True


def write_llmapi_entry(dest: Path, facts: LlmapiEntryFacts) -> Path:
    """Write `llmapi_entry.json` into the PyTorch entry being prepared at `dest`."""
    path = dest / LLMAPI_ENTRY
    path.write_text(facts.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def read_llmapi_entry(path: Path) -> LlmapiEntryFacts:
    """The facts of the PyTorch entry at `path` (its `llmapi_entry.json`, a bounded regular file)."""
    file = path / LLMAPI_ENTRY
    raw = read_bounded(file, LLMAPI_ENTRY_LIMIT, error=InvalidEngineError, what="entry facts", follow=False)
    try:
        return LlmapiEntryFacts.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "entry"
        raise InvalidEngineError(f"{file}: {where}: {error['msg']}") from None
    except ValueError as exc:
        raise InvalidEngineError(f"{file}: unreadable: {str(exc).splitlines()[0]}") from None


def _read_pytorch_entry(path: Path) -> EngineInfo:
    """A PyTorch entry: its facts file, its checkpoint's config and the LLM API arguments must all be there."""
    facts = read_llmapi_entry(path)
    for needed in (f"{CHECKPOINT_DIR}/config.json", LLM_API_OPTIONS):
        if not (path / needed).is_file():
            raise InvalidEngineError(f"{path}: missing {needed} (a PyTorch entry needs it)")
    return EngineInfo(
        path=path,
        backend="pytorch",
        architecture=facts.architecture,
        tp_size=facts.tp_size,
        pp_size=facts.pp_size,
        max_batch_size=facts.max_batch_size,
        max_seq_len=facts.max_seq_len,
        # The LLM API never checks max_input_len: without chunked prefill it refuses a prompt longer than
        # max_num_tokens, which is `prompt_limit` with packed input (trtforge.prompt_limit).
        max_input_len=llm_api_prompt_limit(
            max_seq_len=facts.max_seq_len, max_num_tokens=facts.max_num_tokens
        ),
        max_num_tokens=facts.max_num_tokens,
        max_beam_width=1,
        quant_algo=facts.quant_algo,
        kv_cache_quant_algo=facts.kv_cache_quant_algo,
        trtllm_version=facts.trtllm_version,
        dtype=facts.dtype,
        logits_dtype="float32",
        gather_generation_logits=facts.gather_generation_logits,
        context_fmha=True,
        packed_input=True,
    )
