"""The bounded stores of Responses (`proxy.response_store` in memory, `proxy.shared_response_store` shared by the
workers on disk): eviction by count, bytes and age (oldest first), the owner scope, entries larger than the
byte bound, two processes' views of one shared store, input_items pages and the end of a stream cut by shutdown;
time is driven through the store's clock, never slept."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from trtforge.proxy.errors import InvalidRequestError, TritonUnavailableError
from trtforge.proxy.response_store import (
    Responses,
    ResponseStore,
    ResponseStoreLimits,
    StoredResponse,
    owner_of,
    response_store_for,
)
from trtforge.proxy.responses import ResponseFraming, ResponseNotFoundError, ResponsesApi, Turn
from trtforge.proxy.responses_protocol import ResponsesRequest
from trtforge.proxy.shared_response_store import SHARED_STORE_DIR_ENV, SharedResponseStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeStore = Callable[..., Responses]


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # whatever the umask
    return path


@pytest.fixture(params=["memory", "shared"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """`make_store(limits=None, clock=...)`: each store case runs on the memory store and on the shared one."""
    directory = _private_dir(tmp_path / "store")

    def make(limits: ResponseStoreLimits | None = None, **clock: Callable[[], float]) -> Responses:
        if request.param == "memory":
            return ResponseStore(limits, **clock)
        return SharedResponseStore(directory, limits, **clock)

    return make


def _stored(response_id: str, pad: int = 0) -> StoredResponse:
    return StoredResponse(
        response={"id": response_id, "object": "response", "pad": "x" * pad},
        input_items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        conversation=[{"role": "user", "content": "Hi"}],
    )


def _size(stored: StoredResponse) -> int:
    """The bytes an entry counts for: its compact JSON (as the store keeps it)."""
    blob = [stored.response, stored.input_items, stored.conversation]
    return len(json.dumps(blob, ensure_ascii=False, separators=(",", ":")).encode())


def _ids(store: Responses, owner: str, ids: list[str]) -> list[str]:
    """Which of `ids` `owner` can still read."""
    return [i for i in ids if store.get(owner, i) is not None]


def test_what_is_put_is_read_back_as_it_was(make_store: MakeStore) -> None:
    store = make_store()
    stored = _stored("resp_1")
    assert store.put("", "resp_1", stored)
    assert store.get("", "resp_1") == stored
    assert len(store) == 1 and store.bytes == _size(stored)


def test_past_the_count_the_oldest_go_first(make_store: MakeStore) -> None:
    store = make_store(ResponseStoreLimits(max_responses=3))
    ids = [f"resp_{n}" for n in range(5)]
    for response_id in ids:
        assert store.put("", response_id, _stored(response_id))
    assert _ids(store, "", ids) == ids[2:]
    assert len(store) == 3


def test_past_the_bytes_the_oldest_go_until_it_fits(make_store: MakeStore) -> None:
    one = _size(_stored("resp_0", pad=100))
    store = make_store(ResponseStoreLimits(max_bytes=3 * one))
    ids = [f"resp_{n}" for n in range(3)]
    for response_id in ids:
        store.put("", response_id, _stored(response_id, pad=100))
    assert _ids(store, "", ids) == ids and store.bytes == 3 * one
    # One entry the size of two evicts the two oldest, and only them.
    big = _stored("resp_big", pad=2 * one - _size(_stored("resp_big")))
    assert _size(big) == 2 * one
    assert store.put("", "resp_big", big)
    assert _ids(store, "", [*ids, "resp_big"]) == ["resp_2", "resp_big"]
    assert store.bytes == 3 * one <= store.limits.max_bytes


def test_a_response_larger_than_the_byte_bound_is_not_stored_and_evicts_nothing(
    make_store: MakeStore,
) -> None:
    small = _stored("resp_small")
    store = make_store(ResponseStoreLimits(max_bytes=_size(small) + 50))
    assert store.put("", "resp_small", small)
    assert not store.put("", "resp_huge", _stored("resp_huge", pad=100))
    assert store.get("", "resp_huge") is None
    assert store.get("", "resp_small") == small and store.bytes == _size(small)


def test_an_entry_older_than_the_age_bound_is_gone(make_store: MakeStore) -> None:
    clock = Clock()
    store = make_store(ResponseStoreLimits(max_age_s=60), clock=clock)
    store.put("", "resp_old", _stored("resp_old"))
    clock.now += 30
    store.put("", "resp_new", _stored("resp_new"))
    clock.now += 29.5
    assert _ids(store, "", ["resp_old", "resp_new"]) == ["resp_old", "resp_new"]
    clock.now += 0.5  # resp_old is 60 s old: gone, on any touch of the store
    assert len(store) == 1 and store.bytes == _size(_stored("resp_new"))
    assert _ids(store, "", ["resp_old", "resp_new"]) == ["resp_new"]
    assert not store.delete("", "resp_old")
    clock.now += 30
    assert store.get("", "resp_new") is None and len(store) == 0 and store.bytes == 0


def test_storing_again_under_an_id_replaces_the_entry_and_renews_it(make_store: MakeStore) -> None:
    clock = Clock()
    store = make_store(ResponseStoreLimits(max_responses=2, max_age_s=60), clock=clock)
    store.put("", "resp_a", _stored("resp_a"))
    store.put("", "resp_b", _stored("resp_b"))
    clock.now += 30
    replaced = _stored("resp_a", pad=10)
    store.put("", "resp_a", replaced)  # now the newest: resp_b goes first
    assert len(store) == 2 and store.bytes == _size(replaced) + _size(_stored("resp_b"))
    store.put("", "resp_c", _stored("resp_c"))
    assert _ids(store, "", ["resp_a", "resp_b", "resp_c"]) == ["resp_a", "resp_c"]
    assert store.get("", "resp_a") == replaced
    clock.now += 31  # resp_a was stored again 31 s ago: still there
    assert store.get("", "resp_a") == replaced


def test_one_owner_never_reads_or_deletes_anothers_response(make_store: MakeStore) -> None:
    store = make_store()
    alice, bob = owner_of("key-a"), owner_of("key-b")
    store.put(alice, "resp_1", _stored("resp_1"))
    assert store.get(bob, "resp_1") is None
    assert store.get("", "resp_1") is None  # nor the keyless scope
    assert not store.delete(bob, "resp_1")
    assert store.get(alice, "resp_1") == _stored("resp_1")
    assert store.delete(alice, "resp_1")
    assert store.get(alice, "resp_1") is None and not store.delete(alice, "resp_1")
    assert len(store) == 0 and store.bytes == 0


def test_the_owner_is_a_digest_of_the_key_not_the_key() -> None:
    assert owner_of(None) == owner_of("") == ""
    assert owner_of("key-a") != owner_of("key-b")
    assert "key-a" not in owner_of("key-a") and len(owner_of("key-a")) == 64


def test_count_zero_stores_nothing(make_store: MakeStore) -> None:
    store = make_store(ResponseStoreLimits(max_responses=0))
    assert not store.put("", "resp_1", _stored("resp_1"))
    assert store.get("", "resp_1") is None and len(store) == 0


@pytest.mark.parametrize(
    "limits", [{"max_responses": -1}, {"max_bytes": 0}, {"max_age_s": 0}, {"max_age_s": -5.0}]
)
def test_bounds_below_their_minimum_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid response store limits"):
        ResponseStoreLimits(**limits)  # type: ignore[arg-type]


def test_several_models_share_one_store_with_the_widest_bounds() -> None:
    widest = ResponseStoreLimits.widest(
        [
            ResponseStoreLimits(max_responses=5, max_bytes=100, max_age_s=60),
            ResponseStoreLimits(max_responses=2, max_bytes=900, max_age_s=30),
        ]
    )
    assert widest == ResponseStoreLimits(max_responses=5, max_bytes=900, max_age_s=60)
    assert ResponseStoreLimits.widest([]) == ResponseStoreLimits()


# ----------------------------------------------------------------------- the workers' shared store


def test_two_stores_over_one_directory_see_each_others_puts_deletes_and_bounds(tmp_path: Path) -> None:
    """As two workers: what one stores the other reads and deletes, and the count bound holds over both."""
    directory = _private_dir(tmp_path / "store")
    limits = ResponseStoreLimits(max_responses=3)
    one, other = SharedResponseStore(directory, limits), SharedResponseStore(directory, limits)
    alice = owner_of("key-a")
    assert one.put(alice, "resp_1", _stored("resp_1"))
    assert other.get(alice, "resp_1") == _stored("resp_1")
    assert other.get("", "resp_1") is None and not other.delete("", "resp_1")  # the owner scope holds too
    assert other.delete(alice, "resp_1")
    assert one.get(alice, "resp_1") is None and len(one) == 0
    ids = [f"resp_{n}" for n in range(4)]
    for store, response_id in zip((one, other, one, other), ids, strict=True):
        assert store.put("", response_id, _stored(response_id))
    assert _ids(one, "", ids) == _ids(other, "", ids) == ids[1:]  # the oldest out, whoever stored it
    assert len(one) == len(other) == 3 and one.bytes == other.bytes == 3 * _size(_stored("resp_0"))
    assert sorted(p.name for p in directory.glob("*.json") if p.name != "index.json") == sorted(
        f"{hashlib.sha256(i.encode()).hexdigest()}.json" for i in ids[1:]
    )


_WORKER = """
import sys
from trtforge.proxy.response_store import ResponseStoreLimits, StoredResponse
from trtforge.proxy.shared_response_store import SharedResponseStore

directory, name = sys.argv[1:]
store = SharedResponseStore(directory, ResponseStoreLimits(max_responses=50))
sys.stdin.readline()  # the go: both processes put at once
for n in range(300):
    stored = StoredResponse({"id": f"{name}_{n}", "pad": "x" * (n % 7) * 100}, [], [])
    assert store.put("", f"{name}_{n}", stored)
    assert store.get("", f"{name}_{n}") == stored
"""


def test_two_processes_putting_at_once_keep_one_consistent_bounded_store(tmp_path: Path) -> None:
    """Two processes (as two workers) storing 300 responses each at the same time: the lock keeps the index
    whole: exactly the bound's 50 entries in the end, each readable, and no file that is not in the index."""
    directory = _private_dir(tmp_path / "store")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(directory), name],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("one", "other")
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        worker.stdin.close()
    for worker in workers:
        assert worker.stderr is not None
        with worker.stderr:
            errors = worker.stderr.read().decode()
        assert worker.wait(timeout=120) == 0, errors
    store = SharedResponseStore(directory, ResponseStoreLimits(max_responses=50))
    ids = [f"{name}_{n}" for name in ("one", "other") for n in range(300)]
    kept = _ids(store, "", ids)
    assert len(kept) == len(store) == 50
    # The last put of all is one process's last (which one finishes last is the scheduler's choice): it stays.
    assert {"one_299", "other_299"} & set(kept)
    blobs = {p.name for p in directory.glob("*.json")} - {"index.json"}
    assert blobs == {f"{hashlib.sha256(i.encode()).hexdigest()}.json" for i in kept}
    assert [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")] == []


def test_an_id_is_never_a_path(tmp_path: Path) -> None:
    directory = _private_dir(tmp_path / "store")
    (tmp_path / "outside.json").write_text("[{}, [], []]")
    store = SharedResponseStore(directory)
    for response_id in ("../outside", "../outside.json", "/etc/passwd", "index"):
        assert store.get("", response_id) is None and not store.delete("", response_id)
    assert (tmp_path / "outside.json").is_file()


def test_a_directory_others_can_read_is_refused(tmp_path: Path) -> None:
    directory = _private_dir(tmp_path / "store")
    directory.chmod(0o755)
    with pytest.raises(ValueError, match="needs a private directory"):
        SharedResponseStore(directory)
    (tmp_path / "link").symlink_to(_private_dir(tmp_path / "real"))
    with pytest.raises(ValueError, match="needs a private directory"):
        SharedResponseStore(tmp_path / "link")


def test_a_damaged_file_is_read_bounded_and_a_damaged_index_starts_over(tmp_path: Path) -> None:
    directory = _private_dir(tmp_path / "store")
    store = SharedResponseStore(directory)
    store.put("", "resp_1", _stored("resp_1"))
    store.put("", "resp_2", _stored("resp_2"))
    blob = directory / f"{hashlib.sha256(b'resp_1').hexdigest()}.json"
    blob.write_bytes(blob.read_bytes() + b" " * 10_000_000)  # longer than its index says: not read
    assert store.get("", "resp_1") is None
    assert store.get("", "resp_2") == _stored("resp_2")
    (directory / "index.json").write_bytes(b"[not json")
    store = SharedResponseStore(directory)  # a worker that reads the index (one that kept it would not)
    assert len(store) == 0 and store.get("", "resp_2") is None
    assert [p.name for p in directory.glob("*.json")] == ["index.json"]  # the files it indexed are gone
    assert store.put("", "resp_3", _stored("resp_3")) and store.get("", "resp_3") == _stored("resp_3")


def test_the_proxy_shares_the_store_when_the_supervisor_names_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = ResponseStoreLimits(max_responses=7)
    monkeypatch.delenv(SHARED_STORE_DIR_ENV, raising=False)
    alone = response_store_for(limits)
    assert isinstance(alone, ResponseStore) and alone.limits == limits
    monkeypatch.setenv(SHARED_STORE_DIR_ENV, str(_private_dir(tmp_path / "store")))
    shared = response_store_for(limits)
    assert isinstance(shared, SharedResponseStore) and shared.limits == limits
    assert shared.directory == tmp_path / "store"


# ------------------------------------------------------------------------------ input_items pages


def _api_with_items(count: int) -> tuple[ResponsesApi, list[str]]:
    api = ResponsesApi(ResponseStore())
    items = [{"id": f"msg_{n}", "type": "message", "role": "user", "content": []} for n in range(count)]
    api.store.put("", "resp_1", StoredResponse({"id": "resp_1"}, items, []))
    return api, [item["id"] for item in items]


def _pages(api: ResponsesApi, *, limit: int, order: str) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        page = api.input_items("", "resp_1", limit=limit, order=order, after=after)
        ids = [item["id"] for item in page["data"]]
        assert (page["first_id"], page["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None))
        pages.append(ids)
        if not page["has_more"]:
            return pages
        after = page["last_id"]


def test_input_items_page_through_in_either_order() -> None:
    api, ids = _api_with_items(5)
    assert _pages(api, limit=2, order="asc") == [ids[0:2], ids[2:4], ids[4:5]]
    assert _pages(api, limit=2, order="desc") == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    assert _pages(api, limit=5, order="asc") == [ids]  # exactly one page: no has_more


def test_input_items_after_an_unknown_id_is_a_400_and_another_owner_a_404() -> None:
    api, _ = _api_with_items(2)
    with pytest.raises(InvalidRequestError) as caught:
        api.input_items("", "resp_1", limit=10, order="asc", after="msg_nope")
    assert caught.value.param == "after"
    with pytest.raises(ResponseNotFoundError):
        api.input_items(owner_of("key-b"), "resp_1", limit=10, order="asc", after=None)


# ------------------------------------------------------------------- a stream the server cuts (shutdown)


def _turn(store: ResponseStore, *, completed: bool) -> Turn:
    turn = Turn(request=ResponsesRequest(model="tiny", input="Hello"), owner="", history=[], store=store)
    turn.framing = ResponseFraming(turn.start_response(), prompt_tokens=3)
    turn.framing.start()
    if completed:
        turn.framing.finish("stop", 0)
    return turn


def test_shutdown_ends_an_open_stream_with_response_failed_and_stores_it() -> None:
    store = ResponseStore()
    turn = _turn(store, completed=False)
    frames = turn.farewell(TritonUnavailableError("the server is shutting down"))
    [frame] = frames.strip().split("\n\n")
    event_line, data_line = frame.split("\n")
    event = json.loads(data_line.removeprefix("data: "))
    assert event_line == "event: response.failed" and event["type"] == "response.failed"
    assert event["sequence_number"] == 2  # after response.created and response.in_progress
    assert event["response"]["error"]["message"] == "the server is shutting down"
    stored = store.get("", turn.response_id)
    assert stored is not None and stored.response["status"] == "failed"


def test_shutdown_after_the_terminal_event_adds_nothing() -> None:
    # Shutdown can begin while the stream's last event goes out: a Response ends once, never failed after
    # completed.
    store = ResponseStore()
    turn = _turn(store, completed=True)
    assert turn.farewell(TritonUnavailableError("the server is shutting down")) == ""
    assert store.get("", turn.response_id) is None  # storing is the completed stream's own business
