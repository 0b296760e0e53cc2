"""Stand-in for NVIDIA's `tensorrt_llm` 1.3: the LLM API on the PyTorch backend, and no TensorRT backend.

Put `tests/standins/trtllm13` on PYTHONPATH to use it (it never shadows the 1.0 builder stand-in in
`tests/standins/tensorrt_llm`). It follows the names and semantics in `../shared/reference/trtllm-pytorch.md`:
`LLM(model=<local dir>, **TorchLlmArgs fields)` (an unknown argument is an error; `backend="tensorrt"` is a
ValueError), `generate_async(inputs, sampling_params, streaming=...)` returning a `RequestOutput` to iterate,
await or `.result()`, cumulative `token_ids`/`text`/`logprobs` with their `_diff`s, `abort()` (finish_reason
'cancelled'), `shutdown()` (also at exit and on `__exit__`), `RequestError` for per-request failures and
`RuntimeError("LLM is shutting down")` after shutdown. Like the real executor at TP=1 it starts a worker process
(`tensorrt_llm._standin.worker`; one per rank for TP×PP > 1) that loads the checkpoint with transformers on CPU
(one thread) and generates; NVFP4 ModelOpt checkpoints are dequantized to float weights first.
`tensorrt_llm._tensorrt_engine` does not exist and `python -m tensorrt_llm.commands.bench` has no `build`.
"""

import sys

from tensorrt_llm.executor import CompletionOutput, RequestError
from tensorrt_llm.llmapi import LLM, KvCacheConfig, RequestOutput
from tensorrt_llm.sampling_params import GuidedDecodingParams, SamplingParams
from tensorrt_llm.version import __version__

__all__ = [
    "LLM",
    "CompletionOutput",
    "GuidedDecodingParams",
    "KvCacheConfig",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "__version__",
]

# The real package prints its banner on import, to stdout.
print(f"[TensorRT-LLM] TensorRT-LLM version: {__version__}", file=sys.stdout, flush=True)
