"""A real NVFP4 checkpoint for tests: the tiny model's float weights quantized into ModelOpt's export layout.

Unlike `checkpoints.write_nvfp4_checkpoint` (real headers, no data), every tensor here holds real values, so the
LLM API stand-in (tests/standins/trtllm13), which dequantizes NVFP4 at load, generates from it. Per Linear of
each decoder layer (q/k/v/o, gate/up/down; the embedding and the tied lm_head stay BF16):

    weight          U8 [N, K/2]       FP4 E2M1 codes, two a byte, the even element in the low nibble
    weight_scale    F8_E4M3 [N, K/16] one scale per 16-element block: block amax / 6 / weight_scale_2
    weight_scale_2  F32 []            the global scale: amax / (6 × 448)
    input_scale     F32 []            activations' scale (1.0 here; the stand-in ignores it, as weight-only)

plus `k_scale`/`v_scale` per layer (FP8 KV cache), hf_quant_config.json, config.json with its
`quantization_config`, generation_config.json, the tokenizer and the chat template, as nvidia/*-NVFP4 ship.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
BLOCK = 16
FP8_E4M3_MAX = 448.0
QUANTIZED_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# The files an engine directory's tokenizer comes with, copied beside the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def quantize_nvfp4(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One float [N, K] weight as ModelOpt's NVFP4 tensors (K a multiple of 16)."""
    w = weight.to(torch.float32)
    rows, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"in_features {cols} is not a multiple of {BLOCK}")
    amax = float(w.abs().max())
    global_scale = torch.tensor(amax / (6.0 * FP8_E4M3_MAX) if amax > 0 else 1.0, dtype=torch.float32)
    blocks = w.reshape(rows, cols // BLOCK, BLOCK)
    block_scale = (blocks.abs().amax(dim=-1) / 6.0 / global_scale).clamp(max=FP8_E4M3_MAX)
    block_scale_fp8 = block_scale.to(torch.float8_e4m3fn)
    divisor = block_scale_fp8.to(torch.float32) * global_scale
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    scaled = blocks / divisor.unsqueeze(-1)
    codes = (scaled.abs().unsqueeze(-1) - E2M1_MAGNITUDES).abs().argmin(dim=-1)
    codes = (codes | ((scaled < 0) & (codes > 0)).long() << 3).reshape(rows, cols).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return {
        "weight": packed.contiguous(),
        "weight_scale": block_scale_fp8.contiguous(),
        "weight_scale_2": global_scale,
        "input_scale": torch.tensor(1.0, dtype=torch.float32),
    }


def write_nvfp4_from_float(model_dir: Path, tokenizer_dir: Path, dest: Path) -> Path:
    """Quantize the float checkpoint in `model_dir` (config.json + model.safetensors) into `dest`, an NVFP4
    export with the tokenizer files of `tokenizer_dir`; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.endswith(QUANTIZED_MODULES):
            for suffix, value in quantize_nvfp4(tensor).items():
                tensors[f"{module}.{suffix}"] = value
        else:
            tensors[name] = tensor.to(torch.bfloat16)
    for layer in range(int(config["num_hidden_layers"])):
        for kv in ("k_scale", "v_scale"):
            tensors[f"model.layers.{layer}.self_attn.{kv}"] = torch.tensor(1.0, dtype=torch.float32)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    quantization = {
        "quant_algo": "NVFP4",
        "kv_cache_quant_algo": "FP8",
        "group_size": BLOCK,
        "exclude_modules": ["lm_head"],
    }
    config["torch_dtype"] = "bfloat16"
    config["quantization_config"] = {"quant_method": "modelopt", **quantization}
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    hf_quant = {"producer": {"name": "modelopt", "version": "0.29.0"}, "quantization": quantization}
    (dest / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2) + "\n")
    shutil.copyfile(model_dir / "generation_config.json", dest / "generation_config.json")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, dest / name)
    return dest


def write_tiny_nvfp4_checkpoint(tiny_engine: Path, dest: Path) -> Path:
    """The built-in tiny engine's model as an NVFP4 checkpoint in `dest`."""
    return write_nvfp4_from_float(tiny_engine / "hf_model", tiny_engine, dest)


def write_tiny_float_checkpoint(tiny_engine: Path, dest: Path) -> Path:
    """The built-in tiny engine's model as a plain Hugging Face checkpoint (weights + tokenizer) in `dest`."""
    shutil.copytree(tiny_engine / "hf_model", dest)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tiny_engine / name, dest / name)
    return dest
