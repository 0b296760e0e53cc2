"""`tensorrt_llm.llmapi`: the names the real module exports that the stand-in reproduces."""

from tensorrt_llm.executor import CompletionOutput, RequestError
from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import CudaGraphConfig, KvCacheConfig, TorchLlmArgs
from tensorrt_llm.sampling_params import GuidedDecodingParams, SamplingParams

LlmArgs = TorchLlmArgs

__all__ = [
    "LLM",
    "CompletionOutput",
    "CudaGraphConfig",
    "GuidedDecodingParams",
    "KvCacheConfig",
    "LlmArgs",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "TorchLlmArgs",
]
