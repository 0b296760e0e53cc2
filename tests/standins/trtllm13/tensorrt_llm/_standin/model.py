"""The worker's model: a checkpoint directory loaded with transformers on CPU (float32, one thread).

Weights come from the directory's safetensors files; an NVFP4 export (hf_quant_config.json quant_algo NVFP4) is
dequantized first, and scales that only a quantized kernel would use (input_scale, k_scale, v_scale) are dropped.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from tensorrt_llm._standin.nvfp4 import dequantize

_UNUSED_SUFFIXES = (".input_scale", ".k_scale", ".v_scale")


def quant_algo(model_dir: Path) -> str | None:
    """The checkpoint's quant_algo: hf_quant_config.json first, then config.json's quantization_config."""
    hf_quant = model_dir / "hf_quant_config.json"
    if hf_quant.is_file():
        algo = json.loads(hf_quant.read_text()).get("quantization", {}).get("quant_algo")
        return str(algo) if algo else None
    config = json.loads((model_dir / "config.json").read_text())
    algo = (config.get("quantization_config") or {}).get("quant_algo")
    return str(algo) if algo else None


def _state_dict(model_dir: Path, algo: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} holds no *.safetensors weights")
    raw: dict[str, torch.Tensor] = {}
    for path in files:
        raw.update(load_file(str(path)))
    state: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if name.endswith(_UNUSED_SUFFIXES) or ".weight_scale" in name:
            continue
        scale_name = name.removesuffix(".weight") + ".weight_scale"
        if algo == "NVFP4" and name.endswith(".weight") and scale_name in raw:
            state[name] = dequantize(tensor, raw[scale_name], raw[scale_name + "_2"])
        else:
            state[name] = tensor.to(torch.float32)
    return state


class CausalLM:
    """Prefill and decoding steps of one checkpoint, each sequence with its own KV cache."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.set_num_threads(1)
        algo = quant_algo(model_dir)
        if algo not in (None, "NVFP4"):
            raise ValueError(f"the stand-in cannot run quant_algo {algo}")
        config_dict = json.loads((model_dir / "config.json").read_text())
        config_dict.pop("quantization_config", None)  # transformers would look for ModelOpt's quantizer
        model_type = config_dict.pop("model_type")
        config = AutoConfig.for_model(model_type, **config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(_state_dict(model_dir, algo), strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ValueError(
                f"the checkpoint does not fit {config.architectures}: missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        if tied:
            model.tie_weights()
        self.model = model.eval()
        self.vocab_size = int(config.vocab_size)
        self.max_position_embeddings = int(getattr(config, "max_position_embeddings", 2048))
        # transformers 5.x renamed forward's `past_key_values` to `cache`.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:
            return DynamicCache()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Feed `ids` after what `cache` holds; the float32 logits of the last position."""
        outputs = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        logits: torch.Tensor = outputs.logits[0, -1].float()
        return logits
