"""The proxy's one error path, over real HTTP: every refusal (the middlewares' 401, 413 and 431, the routes'
400/404/405/503) is the same envelope rendered the same way, and an exception after a stream has started, of
any kind, is an error frame and `data: [DONE]`, after which the proxy keeps serving.

The mid-stream failure is real: a tritonserver whose `tensorrt_llm` model sends a token id no tokenizer has after
echoing the prompt (tests/standins/broken_engine_model.py), which the proxy's detokenizer cannot decode — an
exception that is not one of the proxy's `ApiError`s, as a bug would raise.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import free_port
from proxy_fixtures import CHAT_TEMPLATE, FAILURE_BOUND_S, running_proxy, serve_in_thread, write_tokenizer_dir
from triton_helpers import loopback_triton, write_engine_dir
from trtforge.engine import read_engine
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.limits import MAX_HEADER_BYTES
from trtforge.proxy.messages_protocol import AnthropicErrorResponse
from trtforge.proxy.protocol import ErrorResponse
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.triton import write_model_repository

MODEL = "tiny-test"
KEY = "s3cret-key"
LIMIT = 1024
BROKEN_MODEL = Path(__file__).parent / "standins" / "broken_engine_model.py"
INTERNAL = {"message": "internal server error", "type": "server_error", "param": None, "code": None}


# -------------------------------------------------------------------------------- one envelope, one rendering


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ProxySettings(
        model_name=MODEL,
        engine_dir=write_tokenizer_dir(tmp_path_factory.mktemp("engine")),
        triton_grpc_url=f"127.0.0.1:{free_port()}",  # nothing listens there
        max_seq_len=64,
        max_input_len=48,  # a Messages prompt has the template's empty thinking block too
        health_timeout_s=0.5,
        max_body_bytes=LIMIT,
    )
    server = make_server([settings], port=free_port(), log_level="critical", api_key=KEY)
    with serve_in_thread(server) as url:
        yield url


def _assert_the_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """`response` is the one envelope, byte for byte what its builder renders, with the request id echoed."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == response.request.headers["x-request-id"]
    envelope = ErrorResponse.model_validate_json(response.content)
    assert response.content == envelope.model_dump_json().encode()
    error: dict[str, Any] = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    return error


def test_middleware_and_route_errors_are_one_envelope_rendered_one_way(keyed_url: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    keyed = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=keyed_url, timeout=FAILURE_BOUND_S) as http:

        def send(method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
            request_id = {"X-Request-Id": f"rid-{method}-{path}-{len(headers)}"}
            return http.request(method, path, headers={**headers, **request_id}, **kwargs)

        errors = {
            401: send("GET", "/v1/models", {}),
            413: send("POST", "/v1/completions", keyed, content=b" " * (LIMIT + 1)),
            431: send("GET", "/v1/models", {**keyed, "X-Junk": "a" * (MAX_HEADER_BYTES + 1)}),
            400: send("POST", "/v1/chat/completions", keyed, json={**chat, "temperature": -1}),
            404: send("POST", "/v1/chat/completions", keyed, json={**chat, "model": "nope"}),
            405: send("DELETE", "/v1/chat/completions", keyed),
            503: send("POST", "/v1/chat/completions", keyed, json=chat),
        }
    bodies = {status: _assert_the_envelope(response, status) for status, response in errors.items()}
    # Each keeps the body it has always had.
    assert bodies[401] == {
        "message": "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert errors[401].headers["www-authenticate"] == "Bearer"
    assert bodies[413] == {
        "message": f"the request body is larger than {LIMIT} bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert bodies[431] == {
        **bodies[413],
        "message": f"the request headers are larger than {MAX_HEADER_BYTES} bytes",
    }
    assert bodies[400]["param"] == "temperature" and bodies[400]["code"] == "invalid_value"
    assert bodies[404]["code"] == "model_not_found"
    assert bodies[405]["type"] == "invalid_request_error"
    assert bodies[503]["type"] == "service_unavailable"


def test_the_messages_routes_answer_in_anthropics_envelope(keyed_url: str) -> None:
    message = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    keyed = {"x-api-key": KEY}
    with httpx.Client(base_url=keyed_url, timeout=FAILURE_BOUND_S) as http:
        errors = {
            (401, "authentication_error"): http.post("/v1/messages", json=message),
            (413, "request_too_large"): http.post("/v1/messages", headers=keyed, content=b" " * (LIMIT + 1)),
            (431, "request_too_large"): http.post(
                "/v1/messages/count_tokens", headers={**keyed, "X-Junk": "a" * (MAX_HEADER_BYTES + 1)}
            ),
            (400, "invalid_request_error"): http.post(
                "/v1/messages", headers=keyed, json={k: v for k, v in message.items() if k != "max_tokens"}
            ),
            (404, "not_found_error"): http.post(
                "/v1/messages", headers=keyed, json={**message, "model": "x"}
            ),
            (405, "invalid_request_error"): http.get("/v1/messages", headers=keyed),
            (503, "overloaded_error"): http.post("/v1/messages", headers=keyed, json=message),
        }
        # Beside them, the OpenAI routes keep OpenAI's envelope.
        openai_404 = http.post("/v1/chat/completions", headers=keyed, json={**message, "model": "x"})
    for (status, kind), response in errors.items():
        assert response.status_code == status, response.text
        envelope = AnthropicErrorResponse.model_validate_json(response.content)
        assert response.content == envelope.model_dump_json().encode()
        assert envelope.error.type == kind and envelope.error.message
    assert "max_tokens" in errors[400, "invalid_request_error"].json()["error"]["message"]
    assert set(openai_404.json()) == {"error"} and openai_404.json()["error"]["code"] == "model_not_found"


# ------------------------------------------------------------------------------------- failures mid-stream


PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def broken_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The proxy in front of a tritonserver whose model breaks after echoing the prompt; and how many tokens
    PROMPT is (asked for more, the model breaks)."""
    root = tmp_path_factory.mktemp("broken-engine")
    engine_dir = write_engine_dir(root / "engine", backend="reference")
    (engine_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    engine = read_engine(engine_dir)
    repository = write_model_repository({MODEL: engine}, root / "repository")
    shutil.copyfile(BROKEN_MODEL, repository / "tensorrt_llm" / "1" / "model.py")
    prompt_tokens = len(ProxyTokenizer.load(engine_dir).encode(PROMPT))
    with loopback_triton(repository, root) as triton, running_proxy(MODEL, engine, triton) as (url, _):
        yield url, prompt_tokens


@pytest.mark.triton
def test_a_non_api_exception_mid_stream_is_an_error_frame_then_done_and_the_proxy_keeps_serving(
    broken_proxy: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    url, prompt_tokens = broken_proxy
    caplog.set_level(logging.ERROR, logger="trtforge.proxy.errors")
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=FAILURE_BOUND_S)

    # The official SDK: the prompt's echo arrives, then the error frame is raised as an APIError.
    texts: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in sdk.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=prompt_tokens + 4, stream=True
        ):
            texts.append(chunk.choices[0].text)
    assert "".join(texts) == PROMPT
    assert raised.value.message == "internal server error" and raised.value.body == INTERNAL

    # The raw stream: the text frames, one error frame, then [DONE]; nothing of the exception or the prompt.
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": prompt_tokens + 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=FAILURE_BOUND_S) as response:
        assert response.status_code == 200
        frames = [line for line in response.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2].removeprefix("data: ")) == {"error": INTERNAL}
    assert "".join(json.loads(f.removeprefix("data: "))["choices"][0]["text"] for f in frames[:-2]) == PROMPT

    # Chat, with several choices (their streams merged): the same frame, then [DONE].
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "n": 2,
        "ignore_eos": True,  # the echoed template holds the end token: past it, the model breaks
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat, timeout=FAILURE_BOUND_S) as response:
        assert response.status_code == 200
        frames = [line for line in response.iter_lines() if line]
    assert frames[-2:] == [f"data: {json.dumps({'error': INTERNAL}, separators=(',', ':'))}", "data: [DONE]"]

    # Not streamed: the same failure is a 500 in the envelope.
    whole = httpx.post(
        f"{url}/v1/completions",
        json={**body, "stream": False},
        headers={"X-Request-Id": "whole-1"},
        timeout=FAILURE_BOUND_S,
    )
    assert whole.status_code == 500 and whole.json() == {"error": INTERNAL}
    assert whole.headers["x-request-id"] == "whole-1"

    # The details went to the log, not to the client.
    logged = [r for r in caplog.records if r.getMessage().startswith("unexpected error: TypeError")]
    assert len(logged) == 4 and all(r.exc_info for r in logged)

    # The proxy keeps serving: a generation within the prompt's length is the prompt, streamed or not.
    served = sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=prompt_tokens)
    assert served.choices[0].text == PROMPT and served.choices[0].finish_reason == "length"
    streamed = sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=prompt_tokens, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == PROMPT
