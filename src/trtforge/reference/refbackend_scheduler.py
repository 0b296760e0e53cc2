"""The reference `tensorrt_llm` model's scheduler: one worker thread, in-flight batching one token at a time.

Shipped beside the reference model's `model.py` (Triton python backend); imports only numpy, its siblings
`trtllm_contract` and `refbackend_decoder`, and the standard library.

As the TensorRT-LLM backend does:
- `submit` only queues a request; the worker admits queued requests and decodes every active one a token at a
  time, in turn (interleaved), each with its own KV cache. Triton's threads never wait on the model.
- Streaming: one response per new token holding just that token. Non-streaming: one response with every token
  (the prompt first unless `exclude_input_in_output`). The last response carries the final flag: when
  generation ends without a new token (end_id, cancel, stop) it holds zero tokens ([1, 1, 0]). A final flag is
  never sent alone: `tritonclient.grpc.aio` cannot ask for empty final responses, so its users would never see
  the end. Errors: one response carrying the error, flagged final.
- Generation stops at `end_id` (the end token is not returned, like TensorRT-LLM's executor), at a stop word
  (its tokens are returned), after `request_output_len` tokens, at the engine's max_seq_len, when the guide's
  grammar is complete, on cancellation of the request (checked every `cancellation_check_period_ms`), or on a
  request with the same id carrying `stop=true`, which is answered at once and takes effect before the next
  token step. Without `end_id` it never stops at EOS.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

# Type-checked against the package's copies; inside Triton they are sibling files (see trtllm_contract).
if TYPE_CHECKING:
    from trtforge.reference.refbackend_decoder import Decoder, Sequence
    from trtforge.reference.refbackend_guides import Guides
    from trtforge.triton.models.common.trtllm_contract import (
        FINAL,
        BackendParameters,
        ModelLimits,
        Output,
        RequestError,
        build_response,
        empty_response,
        is_stop_request,
        parse_request,
        send_error,
    )
else:
    from refbackend_decoder import Sequence
    from trtllm_contract import (
        FINAL,
        Output,
        RequestError,
        build_response,
        empty_response,
        is_stop_request,
        parse_request,
        send_error,
    )

# A stop request that names no active request is kept this long, for a request still waiting to start.
_STOP_MEMORY_S = 60.0


class Scheduler:
    """A worker thread that admits queued requests and decodes the active ones a token at a time, in turn."""

    def __init__(
        self,
        decoder: Decoder,
        params: BackendParameters,
        limits: ModelLimits,
        *,
        max_seq_len: int,
        log: Any,
        guides: Guides | None = None,
    ) -> None:
        self.decoder = decoder
        self.guides = guides
        self.params = params
        self.limits = limits
        self.max_seq_len = max_seq_len
        self.log = log
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.active: list[Sequence] = []
        self._stops: dict[str, float] = {}  # request id -> when its stop request arrived
        self._stops_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reference-decoder", daemon=True)
        self._thread.start()

    def submit(self, request: Any) -> None:
        """Queue a request; a stop request is answered at once and takes effect before the next token step.

        Stops do not wait for a whole round (one step of every active request): with many requests active a
        round takes seconds on a CPU, and TensorRT-LLM ends a cancelled request at its next iteration.
        """
        sender = request.get_response_sender()
        if is_stop_request(request):
            with self._stops_lock:
                self._stops[request.request_id()] = time.monotonic()
            sender.send(empty_response(), flags=FINAL)
            return
        self.inbox.put((request, sender))

    def shutdown(self) -> None:
        self._stopping.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._admit(block=not self.active)
            for seq in list(self.active):
                self._apply_stops()
                if seq.stopped:
                    continue  # finished by a stop request
                try:
                    self._advance(seq)
                except Exception as exc:  # a failing request must not take the model down
                    self.log.log_error(f"request {seq.request_id or '-'} failed: {type(exc).__name__}: {exc}")
                    self.active.remove(seq)
                    self._safe_error(seq.sender, f"generation failed: {type(exc).__name__}: {exc}")
        for seq in self.active:
            self._safe_error(seq.sender, "the model is being unloaded")

    def _admit(self, *, block: bool) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is None:
                return
            block = False
            request, sender = item
            try:
                self._start(request, sender)
                self._apply_stops()  # a prefill takes a while; stops need not wait for all of them
            except RequestError as exc:
                self._safe_error(sender, str(exc), invalid_request=True)
            except Exception as exc:
                self.log.log_error(f"request could not start: {type(exc).__name__}: {exc}")
                self._safe_error(sender, f"request could not start: {type(exc).__name__}: {exc}")

    def _start(self, request: Any, sender: Any) -> None:
        request_id = request.request_id()
        if request_id and self._take_stop(request_id):
            self.log.log_info(f"request {request_id} stopped before it started")
            sender.send(empty_response(), flags=FINAL)
            return
        spec = parse_request(request, self.params, self.limits)
        room = self.max_seq_len - len(spec.input_ids)
        if spec.max_new_tokens > room:
            self.log.log_warn(
                f"request_output_len {spec.max_new_tokens} + prompt exceeds max_seq_len {self.max_seq_len}; "
                f"generating at most {room} tokens"
            )
        seq = Sequence(
            request=request,
            sender=sender,
            request_id=request_id,
            spec=spec,
            max_new_tokens=min(spec.max_new_tokens, room),
            last_cancel_check=time.monotonic(),
        )
        if spec.guide is not None:
            if self.guides is None:
                raise RuntimeError("guided decoding is not available in this model")
            seq.matcher = self.guides.matcher(*spec.guide)
        seq.cache = self.decoder.make_cache()
        seq.next_logits = self.decoder.forward(spec.input_ids, seq.cache)
        self.active.append(seq)

    def _take_stop(self, request_id: str) -> bool:
        with self._stops_lock:
            return self._stops.pop(request_id, None) is not None

    def _apply_stops(self) -> None:
        """Finish the active requests that a stop request named; forget stops that matched nothing for long."""
        if not self._stops:
            return
        for seq in list(self.active):
            if seq.request_id and self._take_stop(seq.request_id):
                self.log.log_info(f"request {seq.request_id} stopped after {len(seq.tokens)} tokens")
                seq.stopped = True
                self._finish(seq)
        expired = time.monotonic() - _STOP_MEMORY_S
        with self._stops_lock:
            for request_id in [r for r, at in self._stops.items() if at < expired]:
                del self._stops[request_id]

    def _advance(self, seq: Sequence) -> None:
        """One step for `seq`: check cancellation, pick a token, send it, finish when a stop condition holds."""
        if self._is_cancelled(seq):
            self.log.log_info(f"request {seq.request_id or '-'} cancelled after {len(seq.tokens)} tokens")
            self._finish(seq)
            return
        token, log_prob = self.decoder.choose(seq, self.guides)
        spec = seq.spec
        if spec.end_id is not None and token == spec.end_id:
            self._finish(seq)  # the end token itself is not returned, nor its logits row
            return
        if spec.return_generation_logits and seq.next_logits is not None:
            seq.logits.append(seq.next_logits.cpu().numpy().astype(np.float32))
        seq.tokens.append(token)
        seq.log_probs.append(log_prob)
        # A complete grammar ends the generation (xgrammar then allows only its stop token).
        guided_done = seq.matcher is not None and (
            not seq.matcher.accept_token(token) or seq.matcher.is_terminated()
        )
        if (
            guided_done
            or len(seq.tokens) >= seq.max_new_tokens
            or any(seq.tokens[-len(w) :] == w for w in spec.stop_words)
        ):
            self._finish(seq, with_last_token=True)
            return
        if spec.streaming:
            seq.sender.send(_response(seq, [token], [log_prob], seq.logits[-1:]))
        seq.next_logits = self.decoder.forward([token], seq.cache)

    def _is_cancelled(self, seq: Sequence) -> bool:
        now = time.monotonic()
        if (now - seq.last_cancel_check) * 1000 < self.params.cancellation_check_period_ms:
            return False
        seq.last_cancel_check = now
        return bool(seq.request.is_cancelled())

    def _finish(self, seq: Sequence, *, with_last_token: bool = False) -> None:
        """Send the last response, flagged final (a final response without outputs never reaches aio clients).

        Streaming: the last token if it has not been sent, else no tokens. Non-streaming: everything.
        """
        self.active.remove(seq)
        seq.cache = None
        if seq.spec.streaming:
            tokens = seq.tokens[-1:] if with_last_token else []
            log_probs = seq.log_probs[-1:] if with_last_token else []
            logits = seq.logits[-1:] if with_last_token else []
        else:
            prompt = [] if seq.spec.exclude_input_in_output else seq.spec.input_ids
            tokens, log_probs = prompt + seq.tokens, [0.0] * len(prompt) + seq.log_probs
            logits = seq.logits  # one row per generated token returned (not the prompt's)
        seq.sender.send(_response(seq, tokens, log_probs, logits), flags=FINAL)

    def _safe_error(self, sender: Any, message: str, *, invalid_request: bool = False) -> None:
        try:
            send_error(sender, message, invalid_request=invalid_request)
        except Exception as exc:  # the client may be gone already
            self.log.log_warn(f"could not send an error response: {exc}")


def _response(
    seq: Sequence, tokens: list[int], log_probs: list[float], logits: list[npt.NDArray[np.float32]]
) -> Any:
    """A response holding `tokens` of `seq`, with its counts and log probabilities so far."""
    return build_response(
        seq.spec,
        Output(
            tokens=tokens,
            log_probs=log_probs,
            cum_log_prob=sum(seq.log_probs),
            num_output_tokens=len(seq.tokens),
            logits=logits,
            vocab_size=seq.next_logits.numel() if seq.next_logits is not None else 0,
        ),
    )
