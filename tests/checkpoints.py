"""Write checkpoints shaped like a ModelOpt NVFP4 export (e.g. nvidia/Qwen3-32B-NVFP4), for tests.

The safetensors headers are real (names, dtypes, shapes, offsets); the data is a hole in a sparse file, so a
20 GB-shaped checkpoint costs a few kilobytes of disk and is written in milliseconds. Import it from tests as
`from checkpoints import write_nvfp4_checkpoint` (pytest puts `tests/` on sys.path: it has no __init__.py).

    <dest>/
        config.json                      Qwen3ForCausalLM, Qwen3-32B dimensions (+ quantization_config)
        hf_quant_config.json             {"producer": {...}, "quantization": {"quant_algo": "NVFP4", ...}}
        model-00001-of-0000N.safetensors ...
        model.safetensors.index.json     {"metadata": {"total_size": ...}, "weight_map": {...}}
        tokenizer.json, tokenizer_config.json, generation_config.json, chat_template.jinja

Broken variants for validation tests: `scale_dtype="BF16"`, `hf_quant_config=False`,
`config_quant_algo="FP8"` (config.json disagrees with hf_quant_config.json), an unsupported architecture through
`config={"architectures": ["Qwen3MoeForCausalLM"]}`, and `overrides={name: (dtype, shape) | None}` for any tensor.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Qwen3-32B.
QWEN3_32B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "torch_dtype": "bfloat16",
    "hidden_size": 5120,
    "intermediate_size": 25600,
    "num_hidden_layers": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "attention_bias": False,
}

# A small model with the same layout, for tests that do not care about size.
TINY_CONFIG: dict[str, Any] = {
    **QWEN3_32B_CONFIG,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
}

DTYPE_BYTES = {"U8": 1, "F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4}
DEFAULT_SHARD_BYTES = 5_000_000_000

TensorSpec = tuple[str, list[int]]


def qwen3_tensor_specs(
    config: Mapping[str, Any],
    *,
    quantized: bool = True,
    kv_cache_scales: bool = True,
    scale_dtype: str = "F8_E4M3",
    exclude_modules: Sequence[str] = ("lm_head",),
) -> dict[str, TensorSpec]:
    """Every tensor of a Qwen3 dense checkpoint, in export order: name → (dtype, shape)."""
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])

    specs: dict[str, TensorSpec] = {"model.embed_tokens.weight": ("BF16", [vocab, hidden])}
    # (module, out_features N, in_features K)
    linears = [
        ("self_attn.q_proj", heads * head_dim, hidden),
        ("self_attn.k_proj", kv_heads * head_dim, hidden),
        ("self_attn.v_proj", kv_heads * head_dim, hidden),
        ("self_attn.o_proj", hidden, heads * head_dim),
        ("mlp.gate_proj", inter, hidden),
        ("mlp.up_proj", inter, hidden),
        ("mlp.down_proj", hidden, inter),
    ]
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{layer}"
        specs[f"{prefix}.input_layernorm.weight"] = ("BF16", [hidden])
        for module, n, k in linears:
            name = f"{prefix}.{module}"
            if quantized and not _excluded(name, exclude_modules):
                specs[f"{name}.weight"] = ("U8", [n, k // 2])
                specs[f"{name}.weight_scale"] = (scale_dtype, [n, k // 16])
                specs[f"{name}.weight_scale_2"] = ("F32", [])
                specs[f"{name}.input_scale"] = ("F32", [])
            else:
                specs[f"{name}.weight"] = ("BF16", [n, k])
        if quantized and kv_cache_scales:
            specs[f"{prefix}.self_attn.k_scale"] = ("F32", [])
            specs[f"{prefix}.self_attn.v_scale"] = ("F32", [])
        specs[f"{prefix}.self_attn.q_norm.weight"] = ("BF16", [head_dim])
        specs[f"{prefix}.self_attn.k_norm.weight"] = ("BF16", [head_dim])
        specs[f"{prefix}.post_attention_layernorm.weight"] = ("BF16", [hidden])
    specs["model.norm.weight"] = ("BF16", [hidden])
    if not config.get("tie_word_embeddings"):
        specs["lm_head.weight"] = ("BF16", [vocab, hidden])
    return specs


def _excluded(module: str, exclude_modules: Sequence[str]) -> bool:
    return any(module == pattern or module.endswith("." + pattern) for pattern in exclude_modules)


def write_safetensors(path: Path, tensors: Mapping[str, TensorSpec], *, sparse: bool = True) -> int:
    """Write a safetensors file with a real header; the data region is a hole (sparse) or zeros. Returns bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
        else:
            f.write(bytes(offset))
    return offset


def write_nvfp4_checkpoint(
    dest: Path,
    *,
    config: Mapping[str, Any] | None = None,
    layers: int | None = None,
    sparse: bool = True,
    tiny: bool = False,
    quantized: bool = True,
    kv_cache_quant_algo: str | None = "FP8",
    hf_quant_config: bool = True,
    quantization_config: bool = True,
    config_quant_algo: str | None = None,
    scale_dtype: str = "F8_E4M3",
    exclude_modules: Sequence[str] = ("lm_head",),
    overrides: Mapping[str, TensorSpec | None] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    tokenizer: bool = True,
) -> Path:
    """Write an NVFP4 checkpoint directory shaped like a ModelOpt export; returns `dest`.

    Args:
        config: keys merged over the Qwen3-32B config (or TINY_CONFIG with `tiny=True`).
        layers: shortcut for `config={"num_hidden_layers": layers}`.
        sparse: leave tensor data as holes (default); False writes zeros (only sensible with `tiny`).
        quantized: False writes a plain BF16 checkpoint without quantization files.
        kv_cache_quant_algo: "FP8" (default, like nvidia/Qwen3-32B-NVFP4) or None.
        hf_quant_config: False leaves out hf_quant_config.json (the silent-garbage case).
        quantization_config: put `quantization_config` into config.json (newer exports do).
        config_quant_algo: the quant_algo config.json claims (default: the same as hf_quant_config.json).
        scale_dtype: dtype of every `weight_scale` (F8_E4M3 is right; anything else is a broken export).
        overrides: per-tensor replacement (dtype, shape), or None to drop the tensor.
        shard_bytes: maximum data bytes per shard (5 GB like the real exports).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    full_config: dict[str, Any] = dict(TINY_CONFIG if tiny else QWEN3_32B_CONFIG)
    full_config.update(config or {})
    if layers is not None:
        full_config["num_hidden_layers"] = layers

    specs = qwen3_tensor_specs(
        full_config,
        quantized=quantized,
        kv_cache_scales=kv_cache_quant_algo is not None,
        scale_dtype=scale_dtype,
        exclude_modules=exclude_modules,
    )
    for name, spec in (overrides or {}).items():
        if spec is None:
            specs.pop(name, None)
        else:
            specs[name] = spec

    quant = {
        "quant_algo": "NVFP4",
        "kv_cache_quant_algo": kv_cache_quant_algo,
        "group_size": 16,
        "exclude_modules": list(exclude_modules),
    }
    if quantized and quantization_config:
        full_config["quantization_config"] = {
            "quant_method": "modelopt",
            **quant,
            "quant_algo": config_quant_algo or "NVFP4",
        }
    _write_json(dest / "config.json", full_config)
    if quantized and hf_quant_config:
        _write_json(
            dest / "hf_quant_config.json",
            {"producer": {"name": "modelopt", "version": "0.29.0"}, "quantization": quant},
        )
    _write_shards(dest, specs, sparse=sparse, shard_bytes=shard_bytes)
    if tokenizer:
        write_tokenizer_files(dest, full_config)
    return dest


def _write_shards(dest: Path, specs: Mapping[str, TensorSpec], *, sparse: bool, shard_bytes: int) -> None:
    shards: list[dict[str, TensorSpec]] = [{}]
    shard_size = 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        if shards[-1] and shard_size + size > shard_bytes:
            shards.append({})
            shard_size = 0
        shards[-1][name] = (dtype, shape)
        shard_size += size
    total = 0
    weight_map: dict[str, str] = {}
    for index, tensors in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(dest / file_name, tensors, sparse=sparse)
        weight_map.update(dict.fromkeys(tensors, file_name))
    _write_json(
        dest / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer_files(dest: Path, config: Mapping[str, Any]) -> None:
    """A small but loadable tokenizer (word-level), its config, generation config and chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = ["hello", "world", "the", "a", "is", "user", "assistant", "system", "\n", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    tok.save(str(dest / "tokenizer.json"))
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<unk>",
            "model_max_length": int(config.get("max_position_embeddings", 4096)),
        },
    )
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": vocab["<|endoftext|>"],
            "eos_token_id": [vocab["<|im_end|>"], vocab["<|endoftext|>"]],
        },
    )
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
