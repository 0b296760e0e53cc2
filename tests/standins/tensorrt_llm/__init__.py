"""Stand-in for NVIDIA's `tensorrt_llm` package: only `tensorrt_llm.commands.bench` (trtllm-bench build).

Put `tests/standins` on PYTHONPATH to use it. See `commands/bench.py` for what it reproduces.
"""

import sys

from tensorrt_llm.version import __version__

# The real package prints its banner on import, to stdout.
print(f"[TensorRT-LLM] TensorRT-LLM version: {__version__}", file=sys.stdout, flush=True)
