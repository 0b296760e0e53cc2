"""The proxy over real HTTP, without a Triton behind it: routes, the error envelope, 503 when Triton is gone."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from conftest import free_port
from proxy_fixtures import FAILURE_BOUND_S, serve_in_thread, write_tokenizer_dir
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
        request_timeout_s=FAILURE_BOUND_S,  # never reached: an unreachable Triton is refused at once
    )
    with serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url:
        yield url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=FAILURE_BOUND_S) as http:
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
    _assert_envelope(client.post("/v1/completions", json={"model": MODEL, "prompt": []}), 400, param="prompt")
    error = _assert_envelope(client.post("/v1/chat/completions", json=_chat(top_logprobs=2)), 400)
    assert error["message"] == "top_logprobs needs logprobs: true"
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


def test_retrieve_model_by_id(base_url: str, client: httpx.Client) -> None:
    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    card = sdk.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model"
    assert client.get(f"/v1/models/{MODEL}").json()["max_model_len"] == 64
    with pytest.raises(openai.NotFoundError) as info:
        sdk.models.retrieve("other/model")
    assert info.value.body is not None and info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_validator_messages_have_no_pydantic_prefix(client: httpx.Client) -> None:
    # A model validator's ValueError: pydantic would say "Value error, suffix is not supported".
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "suffix": "b"})
    assert _assert_envelope(response, 400)["message"] == "suffix is not supported"


def test_request_id_is_echoed_or_assigned(client: httpx.Client) -> None:
    given = client.get("/v1/models", headers={"X-Request-Id": "my-trace.42"})
    assert given.headers["x-request-id"] == "my-trace.42"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/health").headers["x-request-id"]
    # Not printable ASCII, or too long: replaced rather than carried into logs and Triton.
    for bad in ("a b", "x" * 129):
        echoed = client.get("/v1/models", headers={"X-Request-Id": bad}).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32
    # Errors carry it too.
    failed = client.post("/v1/chat/completions", json=_chat(model="nope"), headers={"X-Request-Id": "r1"})
    assert failed.status_code == 404 and failed.headers["x-request-id"] == "r1"


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"):
        assert families[f"trtforge:{name}"] == "histogram"
    assert families["trtforge:num_requests_running"] == "gauge"
    assert families["trtforge:num_requests_waiting"] == "gauge"
    assert families["trtforge:prompt_tokens"] == "counter"
    assert families["trtforge:requests"] == "counter"


def _requests_total(client: httpx.Client) -> dict[tuple[str, str], float]:
    """`trtforge:requests_total` by (model_name, api)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["model_name"], s.labels["api"]): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "trtforge:requests_total"
    }


def test_requests_are_counted_per_api_once_the_model_is_known(client: httpx.Client) -> None:
    before = _requests_total(client)
    # Refused after the model is resolved (context too long; Triton unreachable): counted.
    client.post("/v1/chat/completions", json=_chat(max_tokens=1000))
    client.post("/v1/chat/completions", json=_chat())
    client.post("/v1/completions", json={"model": MODEL, "prompt": "one two " * 40})
    # Refused before: an unknown model (its name is the client's, not a bounded label), an invalid body.
    client.post("/v1/chat/completions", json=_chat(model="nope"))
    client.post("/v1/completions", json={"model": MODEL, "prompt": []})
    after = _requests_total(client)

    def grew(api: str) -> float:
        return after.get((MODEL, api), 0.0) - before.get((MODEL, api), 0.0)

    assert (grew("chat"), grew("completions")) == (2, 1)
    assert {model for model, _ in after} == {MODEL}


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine_dir = write_tokenizer_dir(tmp_path_factory.mktemp("engine-keyed"))
    settings = ProxySettings(
        model_name=MODEL,
        engine_dir=engine_dir,
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        max_seq_len=64,
        max_input_len=32,
        health_timeout_s=0.5,
    )
    server = make_server([settings], port=free_port(), log_level="warning", api_key="s3cret-key")
    with serve_in_thread(server) as url:
        yield url


def test_api_key_is_enforced_on_v1_routes(keyed_url: str) -> None:
    for key in ("wrong", ""):
        sdk = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            sdk.models.list()
        assert info.value.status_code == 401
        assert info.value.body is not None and info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    raw = httpx.get(f"{keyed_url}/v1/models")
    _assert_envelope(raw, 401)
    assert "s3cret" not in raw.text
    ok = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="s3cret-key", max_retries=0)
    assert [m.id for m in ok.models.list()] == [MODEL]
    # Probes and scrapers carry no key.
    assert httpx.get(f"{keyed_url}/metrics").status_code == 200
    assert httpx.get(f"{keyed_url}/health").status_code == 503  # no Triton behind this proxy
