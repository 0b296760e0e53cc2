"""`LLM`: validated arguments, the tokenizer in this process, the executor's worker processes, `generate_async`.

The workers are started with the interpreter this process runs on (found on PATH when `sys.executable` is not a
Python, as inside Triton's python-backend stub) and talk over pipes; a reader thread hands their responses to the
requests' results. Requests are checked here first, as the real LLM does: a prompt longer than max_num_tokens
(chunked prefill off) or not shorter than max_seq_len, or a guided request without a guided_decoding_backend, is
a RequestError raised by `generate_async` itself.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tensorrt_llm.executor.result import GenerationResult
from tensorrt_llm.executor.utils import RequestError
from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
from tensorrt_llm.sampling_params import SamplingParams

RequestOutput = GenerationResult

_STANDIN_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the tensorrt_llm package
_WORKER_START_TIMEOUT_S = 600.0
_WORKER_EXIT_TIMEOUT_S = 10.0


def _python() -> str:
    """The Python to start workers with: this one, or (embedded, e.g. in Triton's stub) python3 on PATH."""
    if Path(sys.executable).name.startswith("python") and os.access(sys.executable, os.X_OK):
        return sys.executable
    found = shutil.which("python3")
    if found is None:
        raise RuntimeError("cannot start the executor worker: no python3 on PATH")
    return found


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, rank: int, world: int) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_STANDIN_ROOT, env.get("PYTHONPATH")]))
        argv = [
            _python(),
            "-m",
            "tensorrt_llm._standin.worker",
            str(to_worker_r),
            str(from_worker_w),
            str(rank),
        ]
        self.process = subprocess.Popen(
            [*argv, str(world)], pass_fds=(to_worker_r, from_worker_w), env=env, stdin=subprocess.DEVNULL
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.send_conn = Connection(to_worker_w, readable=False)
        self.recv_conn = Connection(from_worker_r, writable=False)
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.send_conn.send(message)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.send({"op": "shutdown"})
        try:
            self.process.wait(timeout=_WORKER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.send_conn.close()


def _limits(model_dir: Path, args: TorchLlmArgs) -> int:
    """max_seq_len: the argument, else the model's max_position_embeddings."""
    if args.max_seq_len is not None:
        return args.max_seq_len
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


class LLM:
    """The LLM API on the (stand-in) PyTorch backend."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.args = TorchLlmArgs(model=str(model), **kwargs)
        self._shutdown = False
        self._workers: list[_Worker] = []
        self._results: dict[int, GenerationResult] = {}
        self._results_lock = threading.Lock()
        self._ids = itertools.count(1)
        model_dir = Path(self.args.model)
        if not model_dir.is_dir():
            raise ValueError(
                f"{self.args.model} is not a local directory and the Hugging Face Hub is unreachable"
            )
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{model_dir} has no config.json: not a Hugging Face checkpoint")
        self.max_seq_len = _limits(model_dir, self.args)
        self.tokenizer = None if self.args.skip_tokenizer_init else self._load_tokenizer(model_dir)
        atexit.register(_shutdown_ref, weakref.ref(self))
        world = self.args.tensor_parallel_size * self.args.pipeline_parallel_size
        try:
            self._workers = [_Worker(rank, world) for rank in range(world)]
            start = {
                "model": str(model_dir.resolve()),
                "max_seq_len": self.max_seq_len,
                "guided_decoding_backend": self.args.guided_decoding_backend,
                "tokenizer_dir": self.args.tokenizer or str(model_dir.resolve()),
            }
            for worker in self._workers:
                worker.send(start)
            for worker in self._workers:
                reply = worker.recv_conn.recv() if worker.recv_conn.poll(_WORKER_START_TIMEOUT_S) else None
                if reply is None or reply["op"] != "ready":
                    reason = reply["message"] if reply else "it did not start in time"
                    raise RuntimeError(f"Executor worker failed to start: {reason}")
        except BaseException:
            self.shutdown()
            raise
        self._reader = threading.Thread(target=self._read, name="llm-executor-reader", daemon=True)
        self._reader.start()

    def _load_tokenizer(self, model_dir: Path) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.args.tokenizer or model_dir), local_files_only=True)

    # --- requests ---------------------------------------------------------------------------------------------

    def generate_async(
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
        trace_headers: Any = None,
        priority: float = 0.5,
    ) -> GenerationResult:
        if self._shutdown:
            raise RuntimeError("LLM is shutting down")
        params = copy.deepcopy(sampling_params) if sampling_params is not None else SamplingParams()
        if self.tokenizer is None and params.end_id is None:
            raise ValueError(
                "tokenizer is required to reset end_id if it is None, or you can explicitly specify the end_id for sampling_params"
            )
        params._setup(self.tokenizer)
        prompt, prompt_ids = self._prompt(inputs, params)
        self._check_arguments(prompt_ids, params)
        request_id = next(self._ids)
        decode = None if self.tokenizer is None else self._decode
        result = GenerationResult(request_id, prompt, prompt_ids, params, decode=decode, abort=self._abort)
        with self._results_lock:
            self._results[request_id] = result
        self._workers[0].send(
            {
                "op": "generate",
                "request_id": request_id,
                "prompt": prompt_ids,
                "streaming": streaming,
                "params": _worker_params(params),
            }
        )
        return result

    def generate(self, inputs: Any, sampling_params: SamplingParams | None = None) -> Any:
        """The synchronous form: one result, or a list for a list of prompts."""
        batch = isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
        results = [self.generate_async(i, sampling_params).result() for i in (inputs if batch else [inputs])]
        return results if batch else results[0]

    def _prompt(self, inputs: Any, params: SamplingParams) -> tuple[str | None, list[int]]:
        if isinstance(inputs, dict):
            if "prompt_token_ids" in inputs:
                return None, [int(t) for t in inputs["prompt_token_ids"]]
            inputs = inputs["prompt"]
        if isinstance(inputs, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs the tokenizer (skip_tokenizer_init is set)")
            return inputs, list(self.tokenizer.encode(inputs, add_special_tokens=params.add_special_tokens))
        if isinstance(inputs, list) and all(isinstance(t, int) for t in inputs):
            return None, list(inputs)
        raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")

    def _check_arguments(self, prompt_ids: list[int], params: SamplingParams) -> None:
        length = len(prompt_ids)
        if not prompt_ids:
            raise RequestError("The prompt is empty")
        if not self.args.enable_chunked_prefill and length > self.args.max_num_tokens:
            raise RequestError(
                f"The sum of prompt length ({length}) should not exceed max_num_tokens ({self.args.max_num_tokens})"
            )
        if length >= self.max_seq_len:
            raise RequestError(
                f"The prompt length ({length}) must be less than max_seq_len ({self.max_seq_len})"
            )
        if params.n > self.args.max_batch_size:
            raise ValueError(f"n ({params.n}) cannot exceed max_batch_size ({self.args.max_batch_size})")
        if params.guided_decoding is not None and self.args.guided_decoding_backend is None:
            raise RequestError(
                "guided decoding is not enabled: set guided_decoding_backend when creating the LLM"
            )
        if params.use_beam_search and self.args.max_beam_width <= 1:
            raise ValueError("use_beam_search needs max_beam_width > 1")

    def _decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        assert self.tokenizer is not None
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def _abort(self, request_id: int) -> None:
        if not self._shutdown:
            self._workers[0].send({"op": "abort", "request_id": request_id})

    # --- the executor's responses -----------------------------------------------------------------------------

    def _read(self) -> None:
        conn = self._workers[0].recv_conn
        try:
            while True:
                message = conn.recv()
                self._dispatch(message)
        except (EOFError, OSError):
            pass
        # The worker is gone: whatever is still waiting fails, as the real executor fails everything at once.
        reason = "LLM is shutting down" if self._shutdown else "the executor worker exited unexpectedly"
        with self._results_lock:
            waiting, self._results = list(self._results.values()), {}
        for result in waiting:
            result._deliver({"op": "fatal", "message": reason})
        self._shutdown = True

    def _dispatch(self, message: dict[str, Any]) -> None:
        with self._results_lock:
            result = self._results.get(message["request_id"])
            final = message["op"] == "error" or message.get("final", False)
            if final:
                self._results.pop(message["request_id"], None)
        if result is not None:
            result._deliver(message)

    # --- lifetime ---------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the executor: each worker is told to end, then waited for (killed if it does not)."""
        self._shutdown = True
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=_WORKER_EXIT_TIMEOUT_S)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.shutdown()


def _shutdown_ref(ref: weakref.ref[LLM]) -> None:
    llm = ref()
    if llm is not None:
        llm.shutdown()


def _worker_params(params: SamplingParams) -> dict[str, Any]:
    """What the worker needs of a request's sampling parameters, as plain values."""
    guide = None
    guided = params.guided_decoding
    if guided is not None:
        if guided.json is not None:
            guide = ("json", guided.json if isinstance(guided.json, str) else json.dumps(guided.json))
        elif guided.regex is not None:
            guide = ("regex", guided.regex)
        elif guided.grammar is not None:
            guide = ("grammar", guided.grammar)
        elif guided.json_object:
            guide = ("json_object", None)
        elif guided.structural_tag is not None:
            guide = ("structural_tag", guided.structural_tag)
    return {
        "n": params.n,  # best_of > n is not reproduced
        "max_tokens": params.max_tokens,
        "end_id": None if params.ignore_eos else params.end_id,
        "greedy": params._greedy_decoding,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "seed": params.seed,
        "min_tokens": params.min_tokens,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logprobs": params.logprobs,
        "stop_words": params._stop_words,
        "bad_words": params._bad_words,
        "guide": guide,
    }
