"""Request validation, response shapes and SSE framing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2

from trtforge.proxy.backend import (
    GenerationRequest,
    SamplingParams,
    TritonBackend,
    _response_error,
    build_infer_request,
    is_final,
    parse_chunk,
    parse_output_ids,
)
from trtforge.proxy.errors import InvalidRequestError, TritonRequestError, TritonUnavailableError
from trtforge.proxy.logprobs import top_alternatives
from trtforge.proxy.prepare import to_sampling
from trtforge.proxy.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    DeltaMessage,
)
from trtforge.proxy.sse import DONE_FRAME, format_event

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_fields_are_accepted_and_kept_aside() -> None:
    request = ChatCompletionRequest.model_validate({**CHAT, "some_vendor_flag": True, "other": [1]})
    assert request.model_extra == {"some_vendor_flag": True, "other": [1]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1),
        ("temperature", 2.5),
        ("top_p", 0),
        ("top_k", -2),
        ("max_tokens", 0),
        ("seed", -1),
        ("presence_penalty", 3),
        ("repetition_penalty", 0),
        ("repetition_penalty", 1e308),  # would become inf as FP32
        ("top_k", 2**32 + 1),  # would wrap to 1 (greedy) as INT32
        ("min_tokens", 2**31),
        ("max_tokens", 2**31),
        ("max_completion_tokens", 2**31),
        ("n", 0),
        ("n", 129),
        ("top_logprobs", 21),
        ("top_logprobs", 2),  # without logprobs: true
        ("messages", []),
        ("logit_bias", {"1": 5}),
    ],
)
def test_out_of_range_chat_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({**CHAT, field: value})
    assert info.value.errors()[0]["loc"][:1] in ((field,), ())


def test_non_text_content_parts_are_rejected_and_text_parts_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = ChatCompletionRequest.model_validate({**CHAT, "messages": [{"role": "user", "content": parts}]})
    assert request.messages[0].to_template() == {"role": "user", "content": "ab"}
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        )


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = ChatCompletionRequest.model_validate({**CHAT, "max_tokens": 5, "max_completion_tokens": 7})
    assert request.requested_max_tokens == 7


def test_completion_prompts_one_or_a_list_of_texts_or_token_ids() -> None:
    def prompts(prompt: object) -> object:
        return CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompts

    assert prompts("x") == ["x"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([[1], [2]]) == [[1], [2]]
    for prompt in ([], ["a"] * 257, ["a", [1]]):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    with pytest.raises(ValidationError, match="echo with logprobs"):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True, "logprobs": 1})


def test_include_usage_only_applies_to_streams() -> None:
    options = {"stream_options": {"include_usage": True}}
    assert ChatCompletionRequest.model_validate({**CHAT, **options, "stream": True}).include_usage
    assert not ChatCompletionRequest.model_validate({**CHAT, **options}).include_usage


def test_temperature_zero_is_greedy_top_k_one() -> None:
    greedy = to_sampling(ChatCompletionRequest.model_validate({**CHAT, "temperature": 0, "top_p": 0.5}))
    assert greedy == SamplingParams(top_k=1)
    sampled = to_sampling(ChatCompletionRequest.model_validate({**CHAT, "temperature": 0.7, "top_k": -1}))
    assert sampled.temperature == 0.7 and sampled.top_k is None


def test_a_temperature_without_top_k_or_top_p_samples_from_the_whole_distribution() -> None:
    # TensorRT-LLM is greedy when top-k and top-p are both unset: a temperature alone must send top_p 1.
    sampled = to_sampling(ChatCompletionRequest.model_validate({**CHAT, "temperature": 0.8}))
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.8, 1.0, None)
    with_top_k = to_sampling(ChatCompletionRequest.model_validate({**CHAT, "temperature": 0.8, "top_k": 20}))
    assert (with_top_k.top_p, with_top_k.top_k) == (None, 20)


def test_sse_frames() -> None:
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChatChunkChoice(delta=DeltaMessage(content="a\nb"))]
    )
    frame = format_event(chunk, exclude={"usage"})
    assert frame.startswith("data: ") and frame.endswith("\n\n") and frame.count("\n") == 2
    payload = json.loads(frame[len("data: ") :])
    assert payload["choices"][0]["delta"]["content"] == "a\nb" and "usage" not in payload
    assert DONE_FRAME == "data: [DONE]\n\n"


def test_triton_request_carries_required_and_only_the_set_optional_tensors() -> None:
    gen = GenerationRequest(
        request_id="r1",
        prompt_ids=(5, 6, 7),
        max_tokens=9,
        end_id=2,
        pad_id=0,
        streaming=True,
        sampling=SamplingParams(top_k=1, seed=2**64 - 1),
    )
    request = build_infer_request("tensorrt_llm", gen)
    tensors = {t.name: (t.datatype, list(t.shape)) for t in request.inputs}
    assert tensors == {
        "input_ids": ("INT32", [1, 3]),
        "input_lengths": ("INT32", [1, 1]),
        "request_output_len": ("INT32", [1, 1]),
        "end_id": ("INT32", [1, 1]),
        "pad_id": ("INT32", [1, 1]),
        "streaming": ("BOOL", [1, 1]),
        "exclude_input_in_output": ("BOOL", [1, 1]),
        "runtime_top_k": ("INT32", [1, 1]),
        "seed": ("UINT64", [1, 1]),
    }
    assert request.parameters["triton_enable_empty_final_response"].bool_param
    assert len(request.raw_input_contents) == len(request.inputs)
    assert request.raw_input_contents[0] == bytes([5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0])


def test_triton_responses_give_new_ids_and_the_final_flag() -> None:
    response = service_pb2.ModelInferResponse(model_name="tensorrt_llm")
    output = response.outputs.add()
    output.name, output.datatype = "output_ids", "INT32"
    output.shape.extend([1, 1, 2])
    response.raw_output_contents.append(np.array([[[11, 12]]], dtype=np.int32).tobytes())
    assert parse_output_ids(response) == [11, 12] and not is_final(response)
    empty_final = service_pb2.ModelInferResponse(model_name="tensorrt_llm")
    empty_final.parameters["triton_final_response"].bool_param = True
    assert parse_output_ids(empty_final) == [] and is_final(empty_final)


def test_a_streamed_response_of_one_token_gives_its_id() -> None:
    for token_id in (0, 7, 151_643, 2**31 - 1):
        response = service_pb2.ModelInferResponse(model_name="tensorrt_llm")
        output = response.outputs.add()
        output.name, output.datatype = "output_ids", "INT32"
        output.shape.extend([1, 1, 1])
        response.raw_output_contents.append(np.array([[[token_id]]], dtype=np.int32).tobytes())
        assert parse_output_ids(response) == [token_id]


def test_log_probs_and_logits_are_asked_for_and_parsed() -> None:
    gen = GenerationRequest(
        request_id="trace-1",
        prompt_ids=(1, 2),
        max_tokens=4,
        end_id=0,
        pad_id=0,
        return_log_probs=True,
        return_generation_logits=True,
    )
    request = build_infer_request("tensorrt_llm", gen)
    assert request.id == "trace-1"
    assert {"return_log_probs", "return_generation_logits"} <= {t.name for t in request.inputs}

    response = service_pb2.ModelInferResponse(model_name="tensorrt_llm")
    logits = np.array([[[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]]], dtype=np.float32)
    for name, datatype, array in (
        ("output_ids", "INT32", np.array([[[1, 0]]], dtype=np.int32)),
        ("output_log_probs", "FP32", np.array([[[-0.4, -0.1]]], dtype=np.float32)),
        ("generation_logits", "FP32", logits),
    ):
        output = response.outputs.add()
        output.name, output.datatype = name, datatype
        output.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    chunk = parse_chunk(response, gen)
    assert chunk.ids == [1, 0] and chunk.log_probs == pytest.approx([-0.4, -0.1])
    assert chunk.logits is not None and chunk.logits.shape == (2, 3)
    top = top_alternatives(chunk.logits, 2)
    assert [[i for i, _ in row] for row in top] == [[1, 2], [0, 1]]
    assert sum(np.exp(lp) for _, lp in top_alternatives(chunk.logits, 3)[0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("message", "kind", "status", "text"),
    [
        # The reference model's refusals of what the client sent (its RequestError): 400, without the marker.
        (
            "invalid request: beam_width 2 is not supported: the reference backend decodes beam 1 only",
            InvalidRequestError,
            400,
            "the model refused the request: beam_width 2 is not supported",
        ),
        (
            "invalid request: invalid guided_decoding_guide (regex): Regex parsing error at position 5: x",
            InvalidRequestError,
            400,
            "invalid guided_decoding_guide (regex): Regex parsing error at position 5: x",
        ),
        # xgrammar's own words from a backend that does not mark them: still the client's guide, one line.
        (
            '[15:47:23] /project/cpp/json_schema_converter.cc:4944: Unsupported type "foo"\n',
            InvalidRequestError,
            400,
            'the model refused the request: Unsupported type "foo"',
        ),
        # The model failing on its own stays a 500.
        (
            "generation failed: RuntimeError: CUDA out of memory",
            TritonRequestError,
            500,
            "CUDA out of memory",
        ),
        ("Model tensorrt_llm is not ready", TritonUnavailableError, 503, "not available"),
    ],
)
def test_model_errors_map_to_the_status_of_whose_fault_they_are(
    message: str, kind: type[Exception], status: int, text: str
) -> None:
    error = _response_error(message, TritonBackend("127.0.0.1:1", "tensorrt_llm", request_timeout_s=1))
    assert type(error) is kind
    assert error.status_code == status  # type: ignore[attr-defined]
    assert text in error.message  # type: ignore[attr-defined]
    assert "\n" not in error.message and "invalid request: " not in error.message  # type: ignore[attr-defined]
