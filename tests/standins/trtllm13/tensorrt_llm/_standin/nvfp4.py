"""ModelOpt NVFP4 weights back to floats (the stand-in has no FP4 GEMM: it dequantizes at load).

Per quantized Linear the export holds `weight` U8 [out, in/2] (two FP4 E2M1 values a byte, the even element in
the low nibble), `weight_scale` F8_E4M3 [out, in/16] (one scale per 16-element block), `weight_scale_2` F32 (the
global scale) and `input_scale` F32 (activations; unused here). weight = e2m1 × block scale × global scale.
"""

from __future__ import annotations

import torch

# E2M1 magnitudes by their three low bits; the fourth bit is the sign.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
BLOCK = 16


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., k/2] → float32 [..., k]: the low nibble is the even element, the high nibble the odd one."""
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32)
    low = (packed & 0x0F).long()
    high = (packed >> 4).long()
    return torch.stack((table[low], table[high]), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize(
    weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor
) -> torch.Tensor:
    """One NVFP4 Linear weight as float32 [out, in]."""
    if weight.dtype != torch.uint8:
        raise ValueError(f"an NVFP4 weight is uint8, not {weight.dtype}")
    values = unpack_e2m1(weight)
    out_features, in_features = values.shape
    if weight_scale.shape != (out_features, in_features // BLOCK):
        raise ValueError(
            f"weight_scale has shape {list(weight_scale.shape)}, expected {[out_features, in_features // BLOCK]}"
        )
    scales = weight_scale.to(torch.float32).repeat_interleave(BLOCK, dim=1)
    return values * scales * weight_scale_2.to(torch.float32).reshape(())
