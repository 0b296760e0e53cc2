"""trtforge: NVFP4 checkpoints → TensorRT-LLM engines in a content-addressed store → Triton → OpenAI API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
