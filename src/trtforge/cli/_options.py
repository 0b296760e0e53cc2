"""Options that several commands share, each defined once (same flag, same help wherever it appears).

`--json`, `--allow-unsigned` and `--key-file` are not all here: their help says what that command prints,
accepts or signs (a build's `--key-file` signs its `--push-to` upload, `push`'s signs the push), so only the
help-less `--json` is shared and the others stay with their commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

GpuArch = Annotated[
    str | None,
    typer.Option(help="Target GPU arch (e.g. sm100) when none is visible; $TRTFORGE_GPU_ARCH."),
]
TrtllmPython = Annotated[
    str | None, typer.Option(help="Python with TensorRT-LLM installed; $TRTFORGE_TRTLLM_PYTHON.")
]
JsonFlag = Annotated[bool, typer.Option("--json")]
BackendOption = Annotated[
    str | None,
    typer.Option(
        help="auto, tensorrt, pytorch or reference, over the entry's own backend (auto: tensorrt where the "
        "installed TensorRT-LLM has it, else pytorch)."
    ),
]
