"""A `tensorrt_llm` stand-in (Triton python backend, decoupled) whose output breaks after the prompt's tokens.

It streams the prompt's token ids back, one per response, as `echo_engine_model.py` does. Asked for more tokens
than the prompt has, it then sends token id -1, an id no tokenizer has (what an engine with corrupt output, or
a mismatched vocabulary, produces), and ends. A request for at most the prompt's length is served correctly, so
one server shows both a generation that fails mid-stream and the ones around it that do not. A `stop` request
(the proxy ending a generation it abandoned) gets its final response at once.
"""

import threading

import numpy as np
import triton_python_backend_utils as pb_utils

BROKEN_TOKEN_ID = -1


def _ids_response(ids):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("output_ids", np.array([[ids]], dtype=np.int32)),
            pb_utils.Tensor("sequence_length", np.array([[len(ids)]], dtype=np.int32)),
        ]
    )


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._generate, args=(request,), daemon=True)
            self.threads.append(thread)
            thread.start()
        return None

    def _generate(self, request):
        sender = request.get_response_sender()
        stop = pb_utils.get_input_tensor_by_name(request, "stop")
        if stop is not None and bool(stop.as_numpy().reshape(-1)[0]):
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
        limit = int(
            pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)[0]
        )
        for token in ids[:limit]:
            sender.send(_ids_response([token]))
        if limit > len(ids):
            sender.send(_ids_response([BROKEN_TOKEN_ID]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
