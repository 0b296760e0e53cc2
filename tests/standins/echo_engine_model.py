"""A `tensorrt_llm` stand-in (Triton python backend, decoupled) that streams the prompt's token ids back.

One token per response, up to `request_output_len`, then an empty final response: the shape of the real
backend's streaming output, with an output the test knows in advance (the prompt's own tokens).
"""

import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._echo, args=(request,), daemon=True)
            self.threads.append(thread)
            thread.start()
        return None

    def _echo(self, request):
        sender = request.get_response_sender()
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
        limit = int(
            pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)[0]
        )
        for token in ids[:limit]:
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("output_ids", np.array([[[token]]], dtype=np.int32)),
                        pb_utils.Tensor("sequence_length", np.array([[1]], dtype=np.int32)),
                    ]
                )
            )
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
