"""The reference `tensorrt_llm` model behind a real embedded tritonserver, driven over gRPC streams."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import InferenceServerException
from tritonclient.grpc import aio as grpcclient

from proxy_fixtures import FAILURE_BOUND_S, wait_until
from triton_helpers import loopback_triton
from trtforge.engine import read_engine
from trtforge.reference import reference_backend_files
from trtforge.triton.repository import TENSORRT_LLM, RepositoryOptions, model_configs
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = TENSORRT_LLM


@pytest.fixture(scope="module")
def server(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver with a repository holding only `tensorrt_llm`, configured as the generator writes it."""
    repo = tmp_path_factory.mktemp("repo")
    config = model_configs(
        {"tiny": read_engine(tiny_engine)}, {"tiny": RepositoryOptions(exclude_input_in_output=False)}
    )
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(config[MODEL])
    for name, source in reference_backend_files().items():
        shutil.copyfile(source, repo / MODEL / "1" / name)
    with loopback_triton(repo, tmp_path_factory.mktemp("logs")) as triton:
        yield triton


@pytest.fixture(scope="module")
def tokenizer(tiny_engine: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_engine)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


def _input(name: str, value: Any, dtype: str) -> grpcclient.InferInput:
    array = np.asarray(
        value, dtype={"INT32": np.int32, "BOOL": bool, "FP32": np.float32, "UINT64": np.uint64}[dtype]
    )
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def make_request(
    ids: list[int] | None, *, output_len: int = 32, request_id: str = "", **extra: Any
) -> dict[str, Any]:
    """A stream_infer request; `extra` maps input names to (value, dtype), batch dim included."""
    inputs = []
    if ids is not None:
        inputs += [
            _input("input_ids", [ids], "INT32"),
            _input("input_lengths", [[len(ids)]], "INT32"),
        ]
    inputs.append(_input("request_output_len", [[output_len]], "INT32"))
    inputs += [_input(name, value, dtype) for name, (value, dtype) in extra.items()]
    return {
        "model_name": MODEL,
        "inputs": inputs,
        "request_id": request_id,
    }


@dataclass
class Outcome:
    chunks: list[list[int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finals: int = 0
    extra: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def tokens(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk]


async def _requests(
    *requests: dict[str, Any], hold: asyncio.Event | None = None
) -> AsyncIterator[dict[str, Any]]:
    for request in requests:
        yield request
    if hold is not None:
        await hold.wait()  # keep the stream open until the caller has what it needs


async def run_stream(
    url: str, *requests: dict[str, Any], outputs: tuple[str, ...] = ()
) -> dict[str, Outcome]:
    """Send `requests` on one stream; collect each one's responses (by request id) until all are final."""
    outcomes = {r["request_id"]: Outcome() for r in requests}
    done = asyncio.Event()
    async with grpcclient.InferenceServerClient(url) as client:
        stream = client.stream_infer(_requests(*requests, hold=done))
        async for result, error in stream:
            if error is not None:
                # An error response is final, but aio clients see only the error (no id, no flag).
                outcome = outcomes[_error_request_id(error, outcomes)]
                outcome.errors.append(str(error))
                outcome.finals += 1
            else:
                _record(result, outcomes, outputs)
            if all(o.finals for o in outcomes.values()):
                done.set()
                break
    return outcomes


def _record(result: Any, outcomes: dict[str, Outcome], outputs: tuple[str, ...]) -> None:
    response = result.get_response()
    outcome = outcomes[response.id]
    outcome.chunks.append(result.as_numpy("output_ids").reshape(-1).tolist())
    for name in outputs:
        outcome.extra.setdefault(name, []).append(result.as_numpy(name))
    if response.parameters["triton_final_response"].bool_param:
        outcome.finals += 1


def _error_request_id(error: InferenceServerException, outcomes: dict[str, Outcome]) -> str:
    # Errors carry no request id; the tests send at most one failing request per stream.
    return next(iter(outcomes)) if len(outcomes) == 1 else ""


def generate(url: str, request: dict[str, Any], outputs: tuple[str, ...] = ()) -> Outcome:
    return asyncio.run(asyncio.wait_for(run_stream(url, request, outputs=outputs), timeout=FAILURE_BOUND_S))[
        request["request_id"]
    ]


def _wait_for_log(server: TritonServer, pattern: str) -> int:
    """Wait for the server log to show `pattern`; returns its first group as an int."""
    log_path = server.log_path
    assert log_path is not None
    wait_until(lambda: re.search(pattern, log_path.read_text()) is not None, what=f"a log line {pattern!r}")
    match = re.search(pattern, log_path.read_text())
    assert match is not None
    return int(match.group(1))


def test_non_streaming_returns_prompt_then_tokens(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Hello")
    outcome = generate(server.grpc_url, make_request(ids, output_len=12, request_id="a"))
    assert outcome.errors == [] and outcome.finals == 1
    assert len(outcome.chunks) == 1
    assert outcome.tokens[: len(ids)] == ids
    assert len(outcome.tokens) == len(ids) + 12  # no end_id: never stops at EOS


def test_streaming_equals_non_streaming_greedy(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "What is a GPU?")
    whole = generate(
        server.grpc_url,
        make_request(ids, output_len=40, request_id="w", exclude_input_in_output=([[True]], "BOOL")),
    )
    streamed = generate(
        server.grpc_url, make_request(ids, output_len=40, request_id="s", streaming=([[True]], "BOOL"))
    )
    assert all(len(chunk) == 1 for chunk in streamed.chunks)  # one new token per response, the last one final
    assert streamed.tokens == whole.tokens
    assert len(whole.tokens) == 40


def test_stops_at_end_id_without_returning_it(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Hello")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    free = generate(
        server.grpc_url,
        make_request(ids, output_len=64, request_id="f", exclude_input_in_output=([[True]], "BOOL")),
    )
    assert eos in free.tokens, "the smoke model should emit <|im_end|> for 'Hello'"
    reply = free.tokens[: free.tokens.index(eos)]
    for streaming in (False, True):
        outcome = generate(
            server.grpc_url,
            make_request(
                ids,
                output_len=64,
                request_id="e",
                end_id=([[eos]], "INT32"),
                streaming=([[streaming]], "BOOL"),
                exclude_input_in_output=([[True]], "BOOL"),
            ),
        )
        assert outcome.tokens == reply
        assert outcome.finals == 1


def test_end_id_chosen_from_the_greedy_run(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "What is a GPU?")
    free = generate(
        server.grpc_url,
        make_request(ids, output_len=20, request_id="g", exclude_input_in_output=([[True]], "BOOL")),
    )
    end_id = free.tokens[5]
    outcome = generate(
        server.grpc_url,
        make_request(
            ids,
            output_len=20,
            request_id="h",
            end_id=([[end_id]], "INT32"),
            exclude_input_in_output=([[True]], "BOOL"),
        ),
    )
    assert outcome.tokens == free.tokens[: free.tokens.index(end_id)]


def test_stop_words_end_generation_and_are_kept(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "What is a GPU?")
    free = generate(
        server.grpc_url,
        make_request(ids, output_len=20, request_id="x", exclude_input_in_output=([[True]], "BOOL")),
    )
    word = free.tokens[3:5]
    other = [9, 9, 9]  # a stop word that never matches, listed first
    stop_words = [[[*other, *word], [3, 5, -1, -1, -1]]]  # offsets padded with -1 to the ids length
    outcome = generate(
        server.grpc_url,
        make_request(
            ids,
            output_len=20,
            request_id="y",
            stop_words_list=(stop_words, "INT32"),
            exclude_input_in_output=([[True]], "BOOL"),
        ),
    )
    assert outcome.tokens == free.tokens[:5]


def test_optional_outputs(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Hi")
    outcome = generate(
        server.grpc_url,
        make_request(
            ids,
            output_len=6,
            request_id="o",
            exclude_input_in_output=([[True]], "BOOL"),
            return_log_probs=([[True]], "BOOL"),
            return_num_input_tokens=([[True]], "BOOL"),
            return_num_output_tokens=([[True]], "BOOL"),
        ),
        outputs=(
            "sequence_length",
            "cum_log_probs",
            "output_log_probs",
            "num_input_tokens",
            "num_output_tokens",
        ),
    )
    extra = {name: values[0] for name, values in outcome.extra.items()}
    assert extra["sequence_length"].tolist() == [[6]]
    assert extra["num_input_tokens"].tolist() == [[len(ids)]]
    assert extra["num_output_tokens"].tolist() == [[6]]
    log_probs = extra["output_log_probs"]
    assert log_probs.shape == (1, 1, 6) and (log_probs <= 0).all()
    assert extra["cum_log_probs"][0, 0] == pytest.approx(float(log_probs.sum()), rel=1e-5)


def test_seeded_sampling_is_repeatable(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Tell me a joke")
    sampling = {
        "temperature": ([[1.5]], "FP32"),
        "runtime_top_k": ([[50]], "INT32"),
        "runtime_top_p": ([[0.95]], "FP32"),
        "seed": ([[7]], "UINT64"),
        "exclude_input_in_output": ([[True]], "BOOL"),
    }
    first = generate(server.grpc_url, make_request(ids, output_len=16, request_id="r1", **sampling))
    second = generate(server.grpc_url, make_request(ids, output_len=16, request_id="r2", **sampling))
    assert first.tokens == second.tokens and len(first.tokens) == 16


def test_two_concurrent_requests_both_complete(server: TritonServer, tokenizer: Any) -> None:
    first, second = prompt_ids(tokenizer, "Hello"), prompt_ids(tokenizer, "What is a GPU?")
    streaming = {"streaming": ([[True]], "BOOL")}
    outcomes = asyncio.run(
        asyncio.wait_for(
            run_stream(
                server.grpc_url,
                make_request(first, output_len=30, request_id="c1", **streaming),
                make_request(second, output_len=30, request_id="c2", **streaming),
            ),
            timeout=FAILURE_BOUND_S,
        )
    )
    alone = generate(server.grpc_url, make_request(second, output_len=30, request_id="c3", **streaming))
    assert [len(o.tokens) for o in outcomes.values()] == [30, 30]
    assert outcomes["c2"].tokens == alone.tokens


def test_cancelling_the_stream_stops_generation(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Hello")

    async def cancel_after_a_few() -> int:
        received = 0
        async with grpcclient.InferenceServerClient(server.grpc_url) as client:
            hold = asyncio.Event()
            request = make_request(ids, output_len=900, request_id="k", streaming=([[True]], "BOOL"))
            stream = client.stream_infer(_requests(request, hold=hold))
            async for _result, error in stream:
                assert error is None
                received += 1
                if received == 3:
                    stream.cancel()
                    break
        return received

    assert asyncio.run(asyncio.wait_for(cancel_after_a_few(), timeout=FAILURE_BOUND_S)) == 3
    assert _wait_for_log(server, r"request k cancelled after (\d+) tokens") < 900
    # The server goes on serving.
    outcome = generate(
        server.grpc_url,
        make_request(ids, output_len=5, request_id="after", exclude_input_in_output=([[True]], "BOOL")),
    )
    assert len(outcome.tokens) == 5


def test_stop_request_ends_a_running_request(server: TritonServer, tokenizer: Any) -> None:
    ids = prompt_ids(tokenizer, "Hello")

    async def stop_it() -> Outcome:
        async with grpcclient.InferenceServerClient(server.grpc_url) as client:
            queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
            await queue.put(
                make_request(ids, output_len=900, request_id="long", streaming=([[True]], "BOOL"))
            )

            async def requests() -> AsyncIterator[dict[str, Any]]:
                while (item := await queue.get()) is not None:
                    yield item

            outcome, finals = Outcome(), 0
            async for result, error in client.stream_infer(requests()):
                assert error is None
                response = result.get_response()
                if response.outputs:
                    outcome.chunks.append(result.as_numpy("output_ids").reshape(-1).tolist())
                    if len(outcome.chunks) == 3:
                        await queue.put(
                            make_request(ids, output_len=1, request_id="long", stop=([[True]], "BOOL"))
                        )
                if response.parameters["triton_final_response"].bool_param:
                    finals += 1
                    if finals == 2:  # the stopped request and the stop request
                        await queue.put(None)
                        break
            return outcome

    outcome = asyncio.run(asyncio.wait_for(stop_it(), timeout=FAILURE_BOUND_S))
    assert 3 <= len(outcome.tokens) < 900


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        # input_ids is optional in the contract (embeddings-only requests), so Triton lets the request
        # through and the backend itself must refuse it.
        ({"ids": None, "input_lengths": ([[1]], "INT32")}, "input input_ids is required"),
        ({"beam_width": ([[2]], "INT32")}, "beam_width 2 is not supported"),
        ({"output_len": 0}, "request_output_len must be at least 1"),
    ],
)
def test_bad_request_gets_an_error_and_the_server_keeps_serving(
    server: TritonServer, tokenizer: Any, request_args: dict[str, Any], message: str
) -> None:
    ids = prompt_ids(tokenizer, "Hello")
    args = dict(request_args)
    request = make_request(
        args.pop("ids", ids), output_len=args.pop("output_len", 8), request_id="bad", **args
    )
    outcome = generate(server.grpc_url, request)
    assert len(outcome.errors) == 1 and message in outcome.errors[0]
    assert outcome.finals == 1 and outcome.tokens == []
    good = generate(
        server.grpc_url,
        make_request(ids, output_len=4, request_id="good", exclude_input_in_output=([[True]], "BOOL")),
    )
    assert len(good.tokens) == 4


def test_prompt_longer_than_the_engine_takes_is_refused(server: TritonServer, tiny_engine: Path) -> None:
    # The runtime's rule, not build_config.max_input_len (1024, as trtllm-bench leaves it): chunked context is on
    # by default, so the limit is max_seq_len - 1.
    limit = read_engine(tiny_engine).prompt_limit()
    assert limit == 1023
    outcome = generate(server.grpc_url, make_request([5] * (limit + 1), output_len=4, request_id="long"))
    assert len(outcome.errors) == 1 and f"at most {limit}" in outcome.errors[0]
