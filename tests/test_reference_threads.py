"""The reference model decodes a small model on one CPU thread (more threads only slow its steps down)."""

from __future__ import annotations

from trtforge.reference.refbackend_decoder import intra_op_threads
from trtforge.reference.tiny import MODEL_SHAPE, TOKENIZER_VOCAB_SIZE


def _tiny_parameters() -> int:
    """The parameter count of the built-in tiny model's shape."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    model = AutoModelForCausalLM.from_config(Qwen3Config(**MODEL_SHAPE, vocab_size=TOKENIZER_VOCAB_SIZE))
    return sum(p.numel() for p in model.parameters())


def test_the_tiny_model_decodes_on_one_cpu_thread() -> None:
    assert intra_op_threads(_tiny_parameters(), "cpu") == 1


def test_large_models_and_gpus_keep_torchs_default() -> None:
    qwen3_32b = 32_800_000_000
    assert intra_op_threads(qwen3_32b, "cpu") is None
    assert intra_op_threads(_tiny_parameters(), "cuda") is None
