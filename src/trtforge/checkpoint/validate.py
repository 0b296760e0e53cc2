"""What would build into a broken engine: checks of a `CheckpointInfo` (missing shards, config dimensions, the
architecture the TensorRT engine flow supports, contradicting quantization declarations, the NVFP4 tensor
layout), listed by `check_checkpoint` and raised, first one, by `validate_checkpoint`."""

from __future__ import annotations

from trtforge.checkpoint.model import (
    CONFIG_FILE,
    DIMENSION_KEYS,
    HF_QUANT_CONFIG_FILE,
    INDEX_FILE,
    CheckpointInfo,
    dimension_problem,
)
from trtforge.errors import CheckpointError

# Architectures the TensorRT-engine flow (`trtllm-bench build`, `tensorrt_llm._tensorrt_engine.LLM`) can build
# from a Hugging Face checkpoint. Qwen3 dense joined around July 2025; Qwen3-MoE did not.
SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
        "NemotronForCausalLM",
        "DeciLMForCausalLM",
        "FalconForCausalLM",
        "GPT2LMHeadModel",
    }
)
UNSUPPORTED_HINTS: dict[str, str] = {
    "Qwen3MoeForCausalLM": "Qwen3-MoE runs only on the PyTorch backend, not the TensorRT engine flow",
    "DeepseekV3ForCausalLM": "DeepSeek-V3 runs only on the PyTorch backend, not the TensorRT engine flow",
}


def check_checkpoint(
    info: CheckpointInfo, *, quantization: str | None = None, backend: str = "tensorrt"
) -> list[str]:
    """Every reason the checkpoint would build into a broken engine, one line each (empty when fine).

    Args:
        quantization: the quantization the build asks for (`--quantization`), checked against the checkpoint.
        backend: "pytorch" skips the TensorRT-engine flow's architecture list (the PyTorch backend has its own,
            wider one, e.g. Qwen3-MoE, and says so itself when it lacks a model).
    """
    problems: list[str] = []
    problems += [f"{INDEX_FILE}: shard {name} is missing" for name in info.missing_files]
    problems += _check_dimensions(info)
    if backend == "tensorrt":
        problems += _check_architecture(info)
    problems += _check_quant_declarations(info, quantization)
    problems += _check_nvfp4_layout(info)
    return problems


def validate_checkpoint(info: CheckpointInfo, *, quantization: str | None = None) -> None:
    """Raise the first problem `check_checkpoint` finds, as one line (with how many more there are)."""
    problems = check_checkpoint(info, quantization=quantization)
    if problems:
        more = f" (+{len(problems) - 1} more; see `trtforge inspect`)" if len(problems) > 1 else ""
        raise CheckpointError(f"{info.source}: {problems[0]}{more}")


def _check_dimensions(info: CheckpointInfo) -> list[str]:
    problems = [dimension_problem(key, info.text_config.get(key)) for key in DIMENSION_KEYS]
    return [problem for problem in problems if problem]


def _check_architecture(info: CheckpointInfo) -> list[str]:
    arch = info.architecture
    if arch in SUPPORTED_ARCHITECTURES:
        return []
    hint = UNSUPPORTED_HINTS.get(arch, "not supported by the TensorRT-LLM engine flow")
    return [f"{CONFIG_FILE}: architecture {arch}: {hint}"]


def _check_quant_declarations(info: CheckpointInfo, requested: str | None) -> list[str]:
    problems: list[str] = []
    roles = info.roles()
    packed = [t.name for t in info.tensors if roles[t.name] == "nvfp4_weight"]
    if packed and info.hf_quant is None:
        problems.append(
            f"{HF_QUANT_CONFIG_FILE} is missing, but {packed[0]} is NVFP4-packed: "
            "TensorRT-LLM would pad it into BF16 and the engine would produce garbage"
        )
    hf, cfg = info.hf_quant, info.config_quant
    if hf and cfg:
        if cfg.quant_algo and hf.quant_algo and cfg.quant_algo != hf.quant_algo:
            problems.append(
                f"{CONFIG_FILE} quantization_config.quant_algo {cfg.quant_algo} contradicts "
                f"{HF_QUANT_CONFIG_FILE} quant_algo {hf.quant_algo}"
            )
        if cfg.kv_cache_quant_algo != hf.kv_cache_quant_algo and cfg.kv_cache_quant_algo is not None:
            problems.append(
                f"{CONFIG_FILE} quantization_config.kv_cache_quant_algo {cfg.kv_cache_quant_algo} contradicts "
                f"{HF_QUANT_CONFIG_FILE} kv_cache_quant_algo {hf.kv_cache_quant_algo}"
            )
    declared = info.quantization
    if declared and declared.quant_algo == "NVFP4" and not packed:
        problems.append(f"{declared.source} says NVFP4 but no tensor has a weight_scale: not an NVFP4 export")
    if requested and declared and declared.quant_algo and requested.upper() != declared.quant_algo:
        problems.append(
            f"requested quantization {requested.upper()} contradicts the checkpoint's "
            f"{declared.quant_algo} ({declared.source})"
        )
    return problems


def _check_nvfp4_layout(info: CheckpointInfo) -> list[str]:
    """Each quantized Linear: weight U8 [N, K/2], weight_scale F8_E4M3 [N, K/16], weight_scale_2 F32 scalar."""
    by_name = {t.name: t for t in info.tensors}
    problems: list[str] = []
    for scale in info.tensors:
        if not scale.name.endswith(".weight_scale"):
            continue
        module = scale.name.removesuffix(".weight_scale")
        weight = by_name.get(f"{module}.weight")
        if weight is None:
            problems.append(f"{module}.weight is missing but {scale.name} exists ({scale.file})")
            continue
        if weight.dtype != "U8" or len(weight.shape) != 2:
            problems.append(
                f"{weight.name} is {weight.dtype} {list(weight.shape)}, NVFP4 needs U8 [N, K/2] ({weight.file})"
            )
            continue
        n, half_k = weight.shape
        expected = (n, half_k // 8)  # K/16 with K = 2 × half_k
        if scale.dtype != "F8_E4M3":
            problems.append(
                f"{scale.name} is {scale.dtype}, NVFP4 block scales must be F8_E4M3 ({scale.file})"
            )
        elif scale.shape != expected:
            problems.append(
                f"{scale.name} has shape {list(scale.shape)}, expected {list(expected)} for "
                f"{weight.name} {list(weight.shape)} ({scale.file})"
            )
        global_scale = by_name.get(f"{module}.weight_scale_2")
        if global_scale is None:
            problems.append(f"{module}.weight_scale_2 is missing (NVFP4 needs an F32 global scale)")
        elif global_scale.dtype != "F32" or global_scale.numel != 1:
            problems.append(
                f"{global_scale.name} is {global_scale.dtype} {list(global_scale.shape)}, "
                f"NVFP4 needs an F32 scalar ({global_scale.file})"
            )
    return problems
