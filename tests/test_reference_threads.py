"""The reference model decodes a small model on one CPU thread (more threads only slow its steps down)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from trtforge.reference.tiny import MODEL_SHAPE, TOKENIZER_VOCAB_SIZE
from trtforge.triton.distribution import find_tritonserver

BACKEND_MODEL = Path(__file__).parents[1] / "src" / "trtforge" / "reference" / "backend_model.py"


@pytest.fixture(scope="module")
def backend_model() -> ModuleType:
    """`backend_model.py` imported outside Triton (it needs only the python backend's utils module)."""
    utils_dir = str(find_tritonserver().backend_dir / "python")
    if utils_dir not in sys.path:
        sys.path.append(utils_dir)  # triton_python_backend_utils
    name = "trtforge_test_reference_backend_model"
    spec = importlib.util.spec_from_file_location(name, BACKEND_MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tiny_parameters() -> int:
    """The parameter count of the built-in tiny model's shape."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    model = AutoModelForCausalLM.from_config(Qwen3Config(**MODEL_SHAPE, vocab_size=TOKENIZER_VOCAB_SIZE))
    return sum(p.numel() for p in model.parameters())


def test_the_tiny_model_decodes_on_one_cpu_thread(backend_model: ModuleType) -> None:
    assert backend_model.intra_op_threads(_tiny_parameters(), "cpu") == 1


def test_large_models_and_gpus_keep_torchs_default(backend_model: ModuleType) -> None:
    qwen3_32b = 32_800_000_000
    assert backend_model.intra_op_threads(qwen3_32b, "cpu") is None
    assert backend_model.intra_op_threads(_tiny_parameters(), "cuda") is None
