"""`tensorrt_llm.executor`: the request error and the result types the LLM API returns."""

from tensorrt_llm.executor.result import CompletionOutput, GenerationResult, Logprob
from tensorrt_llm.executor.utils import RequestError

__all__ = ["CompletionOutput", "GenerationResult", "Logprob", "RequestError"]
