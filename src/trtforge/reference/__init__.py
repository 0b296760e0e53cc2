"""See docs/architecture.md."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The reference backend's sibling files: the python backend imports them by name from the model's version
# directory, so each is named to clash with no installed module.
_REFERENCE_BACKEND_SIBLINGS = ("refbackend_scheduler.py", "refbackend_decoder.py", "refbackend_guides.py")


def reference_backend_files() -> dict[str, Path]:
    """The files of the reference `tensorrt_llm` model, by their name in the model's version directory.

    `model.py` is `backend_model.py`; beside it go its siblings, the shared `trtllm_contract.py` and
    `trtforge/prompt_limit.py`.
    """
    package = Path(str(resources.files("trtforge.reference")))
    files = {"model.py": package / "backend_model.py"}
    files.update({name: package / name for name in _REFERENCE_BACKEND_SIBLINGS})
    files["trtllm_contract.py"] = trtllm_contract_file()
    # The runtime's prompt-limit rule, the one trtforge itself applies (standard library only).
    files["prompt_limit.py"] = Path(str(resources.files("trtforge") / "prompt_limit.py"))
    return files


def trtllm_contract_file() -> Path:
    """The `tensorrt_llm` tensor contract shared by the python `tensorrt_llm` models (ship it as `trtllm_contract.py`)."""
    return Path(str(resources.files("trtforge.triton") / "models" / "common" / "trtllm_contract.py"))
