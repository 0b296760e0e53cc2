"""A `tensorrt_llm` model over TensorRT-LLM's LLM API (the PyTorch backend): the engine backend's tensor contract,
token ids in and out, served by `tensorrt_llm.LLM`.

Copied into a model repository as `tensorrt_llm/1/model.py` with `llmapi_sampling.py`, `trtllm_contract.py` and
`prompt_limit.py` (trtforge's, the prompt limit's one rule) beside it (Triton puts that directory on sys.path), so it imports only numpy, triton_python_backend_utils, the
standard library, pyyaml and, at initialize, `tensorrt_llm`. Decoupled python model, one instance; TP/PP > 1 is
the LLM API's own worker pool inside that one instance (no mpirun around tritonserver).

Parameters (config.pbtxt, string values):
    checkpoint_dir                 the checkpoint directory (absolute), passed as `LLM(model=...)`
    llm_api_options                a YAML file of further `LLM` arguments (TorchLlmArgs field names, no `model`),
                                   as `trtllm-serve --extra_llm_api_options` takes it
    exclude_input_in_output        the default when a request does not say (false, as the engine backend)
    cancellation_check_period_ms   how often a client's cancellation is looked for (100)

Behaviour:
- `execute` only hands requests to one background thread running an asyncio loop, where each request is one
  `LLM.generate_async(prompt_ids, SamplingParams(...), streaming=...)`. Streaming: one response per step with the
  step's new token ids (what `token_ids_diff` holds). Non-streaming: one response with every token (the prompt
  first unless `exclude_input_in_output`). `num_return_sequences` n > 1: each response is one sequence's, with its
  `sequence_index`; the last one carries the final flag, which is never sent without outputs.
- Ends: the LLM's (end_id, stop words, max_tokens, a complete guide); a request with the same id and `stop=true`,
  or the client's cancellation (`is_cancelled()`, checked every `cancellation_check_period_ms`), aborts the
  generation (`abort()`); its last response holds what it produced, and the stop request gets an empty one.
- Log probabilities: the chosen tokens' (`output_log_probs`, `cum_log_probs`) from the LLM API's `logprobs`;
  `generation_logits` is filled from its top-20 log probabilities (see llmapi_sampling.logits_row), since the
  LLM API computes log probabilities without gathering logits.
- Errors: a request the contract or the LLM API refuses before it starts (the contract's checks, SamplingParams'
  validation, a prompt longer than max_num_tokens) is the client's fault: INVALID_ARG and `invalid request: …`.
  A failure while generating (RequestError from the LLM) or any other exception is the model's: a plain error.
- `finalize` aborts what is still running and calls `LLM.shutdown()`, which ends the executor's workers.

Before importing `tensorrt_llm` the model puts the `PYTHONPATH` entries of its environment on sys.path: the
embedded server's python stub has PYTHONPATH in its environment but not on its path.
Prompt text is never logged.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import triton_python_backend_utils as pb_utils

if TYPE_CHECKING:
    from trtforge import prompt_limit
    from trtforge.triton.models.common import trtllm_contract as contract
    from trtforge.triton.models.tensorrt_llm_llmapi import llmapi_sampling as sampling
else:
    import llmapi_sampling as sampling
    import prompt_limit
    import trtllm_contract as contract

_FINALIZE_TIMEOUT_S = 30.0


# --- parameters ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmApiParameters:
    checkpoint_dir: Path
    options: dict[str, Any]
    backend: contract.BackendParameters  # what the shared contract reads (defaults, cancellation period)


def _parameter(values: dict[str, str], name: str) -> str:
    value = values.get(name, "")
    return "" if value.startswith("${") else value


def read_parameters(model_config: dict[str, Any], log: Any) -> LlmApiParameters:
    """`checkpoint_dir`, the YAML `llm_api_options` (parsed) and the contract's own parameters."""
    raw = model_config.get("parameters") or {}
    values = {
        key: str(value.get("string_value", "")) for key, value in raw.items() if isinstance(value, dict)
    }
    checkpoint = _parameter(values, "checkpoint_dir")
    if not checkpoint:
        raise pb_utils.TritonModelException("parameter checkpoint_dir (the checkpoint directory) is not set")
    options_path = _parameter(values, "llm_api_options")
    options = load_options(Path(options_path)) if options_path else {}
    # The shared contract reads its parameters from gpt_model_path's config; here the checkpoint plays that part.
    shared = {"parameters": {**raw, "gpt_model_path": {"string_value": checkpoint}}}
    return LlmApiParameters(Path(checkpoint), options, contract.parse_parameters(shared, log))


def load_options(path: Path) -> dict[str, Any]:
    """The LLM API arguments from a `--extra_llm_api_options` YAML file (a mapping, without `model`)."""
    try:
        yaml = importlib.import_module("yaml")  # pyyaml: TensorRT-LLM's containers have it; so does trtforge
    except ImportError:
        raise pb_utils.TritonModelException(
            "reading llm_api_options needs pyyaml, which is not installed"
        ) from None
    try:
        options = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise pb_utils.TritonModelException(f"cannot read llm_api_options {path}: {exc}") from None
    if not isinstance(options, dict):
        raise pb_utils.TritonModelException(f"llm_api_options {path} is not a mapping of LLM arguments")
    if "model" in options:
        raise pb_utils.TritonModelException(
            f"llm_api_options {path} sets model; the checkpoint_dir parameter names the checkpoint"
        )
    return options


def add_pythonpath(environ: dict[str, str] | None = None) -> list[str]:
    """Put the PYTHONPATH entries of the environment at the front of sys.path (in order); returns those added."""
    entries = (environ if environ is not None else dict(os.environ)).get("PYTHONPATH", "").split(os.pathsep)
    added = [entry for entry in entries if entry and entry not in sys.path]
    sys.path[:0] = added
    return added


def _checkpoint_limits(checkpoint: Path, options: dict[str, Any]) -> tuple[int, int]:
    """The longest prompt the LLM takes, by the one rule trtforge's proxy and `plan` use too
    (`prompt_limit.llm_api_arguments_prompt_limit`: max_num_tokens unless chunked prefill, below max_seq_len),
    and the vocabulary size (the width of generation_logits)."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    try:
        longest = prompt_limit.llm_api_arguments_prompt_limit(options, config)
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"cannot serve {checkpoint}: {exc}") from None
    return longest, int(text["vocab_size"])


# --- one generation -----------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One request in flight: its Triton request and sender, and the LLM API's result once submitted."""

    key: int
    request: Any
    sender: Any
    spec: contract.GenerationRequest
    result: Any = None
    aborted: str = ""  # why it was aborted ("" while not)
    sent: list[int] = field(default_factory=list)  # tokens sent so far, per sequence
    task: asyncio.Future[None] | None = None

    def abort(self, why: str) -> None:
        if not self.aborted:
            self.aborted = why
            if self.result is not None:
                self.result.abort()


class Runner:
    """The LLM and the asyncio loop (one background thread) its generations run in."""

    def __init__(self, llm: Any, llmapi: Any, params: LlmApiParameters, vocab_size: int, log: Any) -> None:
        self.llm = llm
        self.llmapi = llmapi
        self.params = params
        self.vocab_size = vocab_size
        self.log = log
        self.active: dict[int, Generation] = {}
        self.by_request_id: dict[str, Generation] = {}
        self._keys = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llmapi-loop", daemon=True)
        self._thread.start()
        self._watch = asyncio.run_coroutine_threadsafe(self._watch_cancellations(), self.loop)
        tokenizer = getattr(llm, "tokenizer", None)
        self.decode: Callable[[list[int]], str] | None = (
            None if tokenizer is None else lambda ids: str(tokenizer.decode(ids, skip_special_tokens=False))
        )

    # Triton's thread ------------------------------------------------------------------------------------------

    def submit(self, request: Any, spec: contract.GenerationRequest) -> None:
        generation = Generation(next(self._keys), request, request.get_response_sender(), spec)
        generation.sent = [0] * spec.num_return_sequences
        self.loop.call_soon_threadsafe(self._start, generation)

    def stop(self, request: Any) -> None:
        """A `stop=true` request: abort the generation with its id; answer the stop request at once."""
        request_id = request.request_id()
        self.loop.call_soon_threadsafe(self._stop, request_id)
        request.get_response_sender().send(contract.empty_response(), flags=contract.FINAL)

    # the loop's thread ----------------------------------------------------------------------------------------

    def _stop(self, request_id: str) -> None:
        generation = self.by_request_id.get(request_id) if request_id else None
        if generation is not None:
            generation.abort("stop request")

    def _start(self, generation: Generation) -> None:
        try:
            arguments = sampling.sampling_arguments(generation.spec, self.decode)
            guide = arguments.pop("guided_decoding", None)
            if guide is not None:
                arguments["guided_decoding"] = self.llmapi.GuidedDecodingParams(**guide)
            params = self.llmapi.SamplingParams(**arguments)
            generation.result = self.llm.generate_async(
                generation.spec.input_ids, params, streaming=generation.spec.streaming
            )
        except (contract.RequestError, ValueError, TypeError, self.llmapi.RequestError) as exc:
            self._error(generation, str(exc), invalid_request=True)
            return
        except Exception as exc:
            self.log.log_error(f"request could not start: {type(exc).__name__}: {exc}")
            self._error(generation, f"request could not start: {type(exc).__name__}: {exc}")
            return
        self.active[generation.key] = generation
        request_id = generation.request.request_id()
        if request_id:
            self.by_request_id[request_id] = generation
        generation.task = asyncio.ensure_future(self._run(generation))  # held: the loop keeps weak references

    async def _run(self, generation: Generation) -> None:
        try:
            async for result in generation.result:
                self._send(generation, result, final=result.finished)
            if generation.aborted:
                produced = sum(len(o.token_ids) for o in generation.result.outputs)
                self.log.log_info(
                    f"request {generation.request.request_id() or '-'} aborted ({generation.aborted}) "
                    f"after {produced} tokens"
                )
        except self.llmapi.RequestError as exc:
            self._error(generation, f"generation failed: {exc}")
        except Exception as exc:  # the LLM's own failure (its executor may be gone): this request fails
            self.log.log_error(
                f"request {generation.request.request_id() or '-'} failed: {type(exc).__name__}: {exc}"
            )
            self._error(generation, f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            self._forget(generation)

    def _forget(self, generation: Generation) -> None:
        self.active.pop(generation.key, None)
        request_id = generation.request.request_id()
        if request_id and self.by_request_id.get(request_id) is generation:
            del self.by_request_id[request_id]

    async def _watch_cancellations(self) -> None:
        period = max(self.params.backend.cancellation_check_period_ms, 1) / 1000
        while True:
            await asyncio.sleep(period)
            for generation in list(self.active.values()):
                if not generation.aborted and generation.request.is_cancelled():
                    generation.abort("cancelled by the client")

    def _send(self, generation: Generation, result: Any, *, final: bool) -> None:
        """The responses for what `result` added since the last: one per sequence with new tokens; at the end,
        every sequence's, the last one flagged final."""
        spec = generation.spec
        pending = []
        for output in result.outputs:
            index = output.index
            if spec.streaming:
                tokens = list(output.token_ids[generation.sent[index] :])
                entries = list(output.logprobs[generation.sent[index] :]) if output.logprobs else []
                if not tokens and not final:
                    continue
            elif final:  # a non-streamed answer is sent whole, at the end
                tokens, entries = list(output.token_ids), list(output.logprobs or [])
            else:
                continue
            generation.sent[index] = len(output.token_ids)
            pending.append((index, self._output(spec, output, tokens, entries)))
        for position, (index, out) in enumerate(pending):
            response = contract.build_response(spec, out)
            if spec.num_return_sequences > 1:
                index_tensor = pb_utils.Tensor("sequence_index", np.array([[index]], dtype=np.int32))
                response = pb_utils.InferenceResponse(
                    output_tensors=[*response.output_tensors(), index_tensor]
                )
            last = final and position == len(pending) - 1
            generation.sender.send(response, flags=contract.FINAL if last else 0)

    def _output(
        self, spec: contract.GenerationRequest, output: Any, tokens: list[int], entries: list[Any]
    ) -> contract.Output:
        wants_log_probs = spec.return_log_probs or spec.return_generation_logits
        log_probs = sampling.chosen_log_probs(tokens, entries) if wants_log_probs else [0.0] * len(tokens)
        rows = (
            [sampling.logits_row(entry, self.vocab_size) for entry in entries]
            if spec.return_generation_logits
            else []
        )
        if not spec.streaming and not spec.exclude_input_in_output:
            tokens = [*spec.input_ids, *tokens]
            log_probs = [0.0] * len(spec.input_ids) + log_probs
        cumulative = output.cumulative_logprob
        return contract.Output(
            tokens=tokens,
            log_probs=log_probs,
            cum_log_prob=float(cumulative) if cumulative is not None else float(sum(log_probs)),
            num_output_tokens=len(output.token_ids),
            logits=rows,
            vocab_size=self.vocab_size,
        )

    def _error(self, generation: Generation, message: str, *, invalid_request: bool = False) -> None:
        try:
            contract.send_error(generation.sender, message, invalid_request=invalid_request)
        except Exception as exc:  # the client may be gone already
            self.log.log_warn(f"could not send an error response: {exc}")

    # unloading ------------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Abort what runs, let the generations send their last responses, then shut the LLM down."""

        async def abort_all() -> None:
            self._watch.cancel()
            for generation in list(self.active.values()):
                generation.abort("the model is being unloaded")
            deadline = time.monotonic() + _FINALIZE_TIMEOUT_S
            while self.active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

        try:
            asyncio.run_coroutine_threadsafe(abort_all(), self.loop).result(timeout=_FINALIZE_TIMEOUT_S + 5)
        finally:
            self.llm.shutdown()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


# --- the Triton model ---------------------------------------------------------------------------------------------


class TritonPythonModel:
    """The `tensorrt_llm` model of a repository serving a checkpoint on TensorRT-LLM's LLM API."""

    def initialize(self, args: dict[str, str]) -> None:
        self.log = pb_utils.Logger
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "the LLM API tensorrt_llm model needs model_transaction_policy { decoupled: true }"
            )
        params = read_parameters(model_config, self.log)
        add_pythonpath()
        llmapi = importlib.import_module("tensorrt_llm")
        max_input_len, vocab_size = _checkpoint_limits(params.checkpoint_dir, params.options)
        self.limits = contract.ModelLimits(
            max_input_len=max_input_len,
            generation_logits=True,
            max_return_sequences=int(params.options.get("max_batch_size") or 2048),
            name="the LLM API model",
        )
        self.params = params
        llm = llmapi.LLM(model=str(params.checkpoint_dir), **params.options)
        self.runner = Runner(llm, llmapi, params, vocab_size, self.log)
        self.log.log_info(
            f"LLM API tensorrt_llm model ready: TensorRT-LLM {getattr(llmapi, '__version__', '?')}, "
            f"checkpoint {params.checkpoint_dir}"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            if contract.is_stop_request(request):
                self.runner.stop(request)
                continue
            try:
                spec = contract.parse_request(request, self.params.backend, self.limits)
            except contract.RequestError as exc:
                contract.send_error(request.get_response_sender(), str(exc), invalid_request=True)
                continue
            self.runner.submit(request, spec)
        return None

    def finalize(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.shutdown()
