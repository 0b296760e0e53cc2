"""The proxy over real HTTP, without a Triton behind it: routes, the error envelope, 503 when Triton is gone."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from conftest import free_port
from proxy_fixtures import serve_in_thread, write_tokenizer_dir
from trtforge.proxy import ProxySettings, make_server

MODEL = "tiny-test"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine_dir = write_tokenizer_dir(tmp_path_factory.mktemp("engine"))
    settings = ProxySettings(
        model_name=MODEL,
        engine_dir=engine_dir,
        triton_grpc_url=f"127.0.0.1:{free_port()}",  # nothing listens there
        max_seq_len=64,
        max_input_len=32,
        health_timeout_s=0.5,
        request_timeout_s=5,
    )
    with serve_in_thread(make_server(settings, port=free_port(), log_level="warning")) as url:
        yield url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        yield http


def _chat(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def _assert_envelope(response: httpx.Response, status: int, *, param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_models_lists_the_engine_name(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL]


def test_validation_errors_are_400_envelopes(client: httpx.Client) -> None:
    error = _assert_envelope(
        client.post("/v1/chat/completions", json=_chat(temperature=-1)), 400, param="temperature"
    )
    assert error["type"] == "invalid_request_error"
    _assert_envelope(client.post("/v1/chat/completions", json={"model": MODEL}), 400, param="messages")
    _assert_envelope(client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400)
    bad_json = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    error = _assert_envelope(bad_json, 400)
    # The position of the syntax error is not a request field.
    assert error["param"] is None and "invalid JSON" in str(error["message"])


def test_unknown_model_and_route_are_404_envelopes(client: httpx.Client) -> None:
    error = _assert_envelope(
        client.post("/v1/chat/completions", json=_chat(model="nope")), 404, param="model"
    )
    assert error["code"] == "model_not_found"
    _assert_envelope(client.get("/v1/nothing-here"), 404)


def test_context_limits_are_checked_before_triton(client: httpx.Client) -> None:
    long_prompt = "one two three four five six seven " * 10
    error = _assert_envelope(
        client.post("/v1/completions", json={"model": MODEL, "prompt": long_prompt}), 400, param="prompt"
    )
    assert error["code"] == "context_length_exceeded"
    error = _assert_envelope(client.post("/v1/chat/completions", json=_chat(max_tokens=1000)), 400)
    assert error["param"] == "max_tokens"
    vocab_overflow = client.post("/v1/completions", json={"model": MODEL, "prompt": [1, 10**6]})
    _assert_envelope(vocab_overflow, 400, param="prompt")


def test_unreachable_triton_is_503_streamed_or_not(client: httpx.Client) -> None:
    for stream in (False, True):
        response = client.post("/v1/chat/completions", json=_chat(stream=stream))
        assert _assert_envelope(response, 503)["type"] == "service_unavailable"
    _assert_envelope(client.get("/health"), 503)


def test_openai_sdk_sees_errors_and_the_server_keeps_serving(base_url: str) -> None:
    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert [m.id for m in sdk.models.list()] == [MODEL]
