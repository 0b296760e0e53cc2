"""schemathesis against the proxy's own OpenAPI document, with the real tritonserver and the reference model behind.

Every generated request must get an answer below 500, and every error must be the route's envelope (OpenAI's, or
Anthropic's on `/v1/messages*`). The engine's context is short (64 tokens) so that the requests the fuzzer makes
valid stay quick to generate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from conftest import copy_engine_with, free_port
from proxy_fixtures import running_triton, serve_in_thread
from trtforge.engine import read_engine
from trtforge.proxy import ProxySettings, make_server

pytestmark = pytest.mark.triton

MODEL = "tiny"
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def proxy_url(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    engine = read_engine(copy_engine_with(tiny_engine, root / "engine", max_seq_len=64, max_batch_size=8))
    with running_triton(engine, root) as server:
        settings = ProxySettings.from_engine(MODEL, engine, server.grpc_url)
        with serve_in_thread(make_server([settings], port=free_port(), log_level="critical")) as url:
            yield url


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is `{"error": {"message", "type", "param", "code"}}` with a message, or on the
    Anthropic routes `{"type": "error", "error": {"type", "message"}}`."""
    if response.status_code < 400:
        return None
    body = response.json()
    if case.operation.path.startswith("/v1/messages"):
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        return None
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return None


def test_no_server_errors_and_every_error_in_the_envelope(proxy_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{proxy_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    }
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def check(case: Any) -> None:
            response = case.call(timeout=120)
            case.validate_response(response, checks=[not_a_server_error, error_envelope])

        check()
