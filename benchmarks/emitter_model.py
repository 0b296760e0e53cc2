"""A `tensorrt_llm` stand-in for benchmarks: a decoupled python-backend model that emits tokens, no model.

`benchmarks/proxy.py` copies it into a generated model repository as `tensorrt_llm/1/model.py`, next to an
`emitter.json` holding `ids` (the token ids to cycle through: real text of the engine's tokenizer) and
`pace_s` (seconds between two tokens of one stream; 0 = as fast as the CPU allows).

It honours the parts of the `tensorrt_llm` contract the proxy uses: `input_ids`/`input_lengths`,
`request_output_len`, `streaming` (one response per token, the last flagged final; non-streaming: one final
response with every token), `exclude_input_in_output`, a request carrying `stop=true` (ends the generation
with the same request id), and cancellation (`is_cancelled`, checked every 50 ms, like the real backend's
`cancellation_check_period_ms`; each cancellation seen is logged with its time to `cancelled.log` beside this
file). One worker thread serves every active request, a token each in turn.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_CANCEL_CHECK_S = 0.05


def _value(request: Any, name: str, default: Any) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    array = tensor.as_numpy()
    return array.reshape(-1)[0].item() if array.size else default


def _response(tokens: list[int]) -> Any:
    ids = np.array(tokens, dtype=np.int32).reshape(1, 1, len(tokens))
    length = np.array([[len(tokens)]], dtype=np.int32)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor("output_ids", ids), pb_utils.Tensor("sequence_length", length)]
    )


@dataclass(order=True)
class _Stream:
    due: float
    seq: int
    request: Any = field(compare=False)
    sender: Any = field(compare=False)
    request_id: str = field(compare=False)
    remaining: int = field(compare=False)
    streaming: bool = field(compare=False)
    prompt: list[int] = field(compare=False)
    sent: list[int] = field(compare=False, default_factory=list)
    offset: int = field(compare=False, default=0)
    next_cancel_check: float = field(compare=False, default=0.0)
    stopped: bool = field(compare=False, default=False)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        settings = json.loads((Path(__file__).parent / "emitter.json").read_text())
        self.ids: list[int] = [int(i) for i in settings["ids"]]
        self.pace_s = float(settings.get("pace_s", 0.0))
        self.cancel_log = Path(__file__).parent / "cancelled.log"
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.counter = itertools.count()
        self.running = True
        self.thread = threading.Thread(target=self._run, name="emitter", daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.inbox.put((request, request.get_response_sender()))

    def finalize(self) -> None:
        self.running = False
        self.inbox.put(None)
        self.thread.join(timeout=5)

    def _run(self) -> None:
        heap: list[_Stream] = []
        while self.running:
            self._admit(heap, block=not heap)
            if not heap:
                continue
            stream = heap[0]
            now = time.monotonic()
            if stream.due > now:
                # Sleep until the next token is due, but wake for new requests.
                self._admit(heap, block=True, timeout=stream.due - now)
                continue
            heapq.heappop(heap)
            try:
                alive = self._step(stream, now)
            except Exception:  # the request is gone (cancelled, client dropped): forget it
                alive = False
            if alive:
                stream.due = max(stream.due + self.pace_s, now) if self.pace_s else now
                stream.seq = next(self.counter)
                heapq.heappush(heap, stream)

    def _admit(self, heap: list[_Stream], *, block: bool, timeout: float | None = None) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=timeout) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is None:
                return
            block = False
            request, sender = item
            try:
                self._start(heap, request, sender)
            except Exception as exc:  # a bad request gets an error, the emitter keeps going
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))),
                    flags=_FINAL,
                )

    def _start(self, heap: list[_Stream], request: Any, sender: Any) -> None:
        request_id = request.request_id()
        if _value(request, "stop", False):
            for stream in heap:
                if request_id and stream.request_id == request_id and not stream.stopped:
                    stream.stopped = True
                    # The proxy ends abandoned generations with a stop request: seen now, like a cancellation.
                    with open(self.cancel_log, "a") as log:
                        log.write(f"{time.monotonic()}\n")
            sender.send(_response([]), flags=_FINAL)
            return
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
        length = int(_value(request, "input_lengths", len(ids)))
        now = time.monotonic()
        stream = _Stream(
            due=now + self.pace_s,
            seq=next(self.counter),
            request=request,
            sender=sender,
            request_id=request_id,
            remaining=int(_value(request, "request_output_len", 16)),
            streaming=bool(_value(request, "streaming", False)),
            prompt=[] if _value(request, "exclude_input_in_output", False) else ids[:length],
            offset=len(ids) % len(self.ids),
            next_cancel_check=now + _CANCEL_CHECK_S,
        )
        heapq.heappush(heap, stream)

    def _step(self, stream: _Stream, now: float) -> bool:
        """Emit one token of `stream`; False when it has ended."""
        if now >= stream.next_cancel_check:
            stream.next_cancel_check = now + _CANCEL_CHECK_S
            if stream.request.is_cancelled():
                stream.stopped = True
                # When the cancellation was seen (CLOCK_MONOTONIC is system-wide): the benchmark's cancel figure.
                with open(self.cancel_log, "a") as log:
                    log.write(f"{time.monotonic()}\n")
        if stream.stopped:
            stream.sender.send(_response([]), flags=_FINAL)
            return False
        token = self.ids[stream.offset % len(self.ids)]
        stream.offset += 1
        stream.remaining -= 1
        last = stream.remaining <= 0
        if stream.streaming:
            stream.sender.send(_response([token]), flags=_FINAL if last else 0)
        else:
            stream.sent.append(token)
            if last:
                stream.sender.send(_response(stream.prompt + stream.sent), flags=_FINAL)
        return not last
