"""Test helpers that talk to a real tritonserver with the official `tritonclient`."""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient


def generate_with_ensemble(
    grpc_url: str, prompt: str, *, stream: bool, max_tokens: int = 16, timeout_s: float = 120.0
) -> list[bytes]:
    """Send `prompt` to the `ensemble` model over the gRPC stream; the `text_output` chunks, in order."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = []
    for name, value, dtype in (
        ("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        ("stream", np.array([[stream]], dtype=bool), "BOOL"),
    ):
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
        chunks = []
        while True:
            result, error = responses.get(timeout=timeout_s)
            assert error is None, error
            output = result.as_numpy("text_output")
            if output is not None:
                chunks.append(output.reshape(-1)[0])
            if result.get_response().parameters["triton_final_response"].bool_param:
                return chunks
    finally:
        client.stop_stream()
        client.close()
