"""`trtforge smoke`: the checks people run by hand after every build, against a running OpenAI proxy.

One chat, the same chat streamed, and a completion, all greedy (temperature 0), then:

- every response is a 200 with a finish reason of `stop` or `length` and no empty text;
- usage adds up (prompt + completion = total, completion ≤ max_tokens; `length` means exactly max_tokens);
- the streamed deltas, joined, equal the non-streamed text, with the same finish reason and token count;
- the model is listed by `/v1/models`.

It measures time to first token and tokens/s of the streamed chat. The client is the standard library's
(`urllib`): what is tested is the server, not an SDK's tolerance.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Check", "SmokeReport", "run_smoke"]

PROMPT = "Hello"
_TIMEOUT_S = 300.0


@dataclass
class Check:
    """One named check: passed or not, with what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class SmokeReport:
    """What `run_smoke` found; `ok` only when every check passed."""

    model: str
    base_url: str
    checks: list[Check] = field(default_factory=list)
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    completion_tokens: int | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class _HttpFailure(Exception):
    pass


def _post(base_url: str, path: str, body: dict[str, Any], api_key: str | None) -> urllib.request.Request:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return urllib.request.Request(f"{base_url}{path}", data=json.dumps(body).encode(), headers=headers)


def _json(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        raise _HttpFailure(f"HTTP {exc.code}: {exc.read(500).decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _HttpFailure(str(exc)) from None
    if not isinstance(data, dict):
        raise _HttpFailure("the response is not a JSON object")
    return data


def _stream(request: urllib.request.Request) -> tuple[list[dict[str, Any]], float | None, float]:
    """The SSE chunks of a streamed request, the time of the first content delta, and of the end."""
    chunks: list[dict[str, Any]] = []
    first: float | None = None
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line.removeprefix("data:").strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise _HttpFailure(f"error in stream: {chunk['error']}")
                chunks.append(chunk)
                if first is None and any(
                    (choice.get("delta") or {}).get("content") for choice in chunk.get("choices", [])
                ):
                    first = time.perf_counter()
    except urllib.error.HTTPError as exc:
        raise _HttpFailure(f"HTTP {exc.code}: {exc.read(500).decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _HttpFailure(str(exc)) from None
    return chunks, first, time.perf_counter()


def _check_choice(
    report: SmokeReport, what: str, choice: dict[str, Any], usage: dict[str, Any], max_tokens: int
) -> None:
    finish = choice.get("finish_reason")
    report.check(f"{what}: finish reason", finish in ("stop", "length"), f"finish_reason={finish!r}")
    prompt, completion, total = (usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    sane = (
        isinstance(prompt, int)
        and isinstance(completion, int)
        and prompt > 0
        and 0 < completion <= max_tokens
        and total == prompt + completion
        and (finish != "length" or completion == max_tokens)
    )
    report.check(
        f"{what}: token counts",
        sane,
        f"prompt={prompt} completion={completion} total={total} (max_tokens {max_tokens})",
    )


def run_smoke(base_url: str, model: str, *, max_tokens: int = 32, api_key: str | None = None) -> SmokeReport:
    """Run every check against the proxy at `base_url` (e.g. `http://127.0.0.1:9000/v1`) serving `model`."""
    base_url = base_url.rstrip("/")
    report = SmokeReport(model=model, base_url=base_url)
    messages = [{"role": "user", "content": PROMPT}]
    greedy = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    try:
        listing = _json(urllib.request.Request(f"{base_url}/models", headers=_auth(api_key)))
        ids = [entry.get("id") for entry in listing.get("data", [])]
        report.check("models: listed", model in ids, f"/v1/models lists {ids}")

        chat = _json(_post(base_url, "/chat/completions", {**greedy, "messages": messages}, api_key))
        choice = chat["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        report.text = text
        report.check("chat: text", bool(text), f"{len(text)} characters")
        _check_choice(report, "chat", choice, chat.get("usage") or {}, max_tokens)

        body = {**greedy, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        chunks, first, ended = _stream(_post(base_url, "/chat/completions", body, api_key))
        deltas = [
            (c.get("delta") or {}).get("content") or "" for chunk in chunks for c in chunk.get("choices", [])
        ]
        finishes = [c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", [])]
        streamed = "".join(deltas)
        usage: dict[str, Any] = next((chunk["usage"] for chunk in reversed(chunks) if chunk.get("usage")), {})
        report.check(
            "stream: equals non-stream",
            streamed == text,
            "identical text" if streamed == text else f"streamed {streamed!r} != {text!r}",
        )
        stream_finish = next((f for f in reversed(finishes) if f), None)
        _check_choice(report, "stream", {"finish_reason": stream_finish}, usage, max_tokens)
        same = stream_finish == choice.get("finish_reason") and usage.get("completion_tokens") == (
            chat.get("usage") or {}
        ).get("completion_tokens")
        report.check(
            "stream: same finish and count",
            same,
            f"{stream_finish}/{usage.get('completion_tokens')} vs "
            f"{choice.get('finish_reason')}/{(chat.get('usage') or {}).get('completion_tokens')}",
        )
        completion_tokens = usage.get("completion_tokens")
        if first is not None:
            report.ttft_s = first - started
            if isinstance(completion_tokens, int) and completion_tokens > 1 and ended > first:
                report.tokens_per_s = (completion_tokens - 1) / (ended - first)
        report.completion_tokens = completion_tokens if isinstance(completion_tokens, int) else None

        completion = _json(_post(base_url, "/completions", {**greedy, "prompt": PROMPT}, api_key))
        choice = completion["choices"][0]
        report.check(
            "completion: text", bool(choice.get("text")), f"{len(choice.get('text') or '')} characters"
        )
        _check_choice(report, "completion", choice, completion.get("usage") or {}, max_tokens)
    except (_HttpFailure, KeyError, IndexError, TypeError) as exc:
        report.check(
            "requests",
            False,
            f"{type(exc).__name__}: {exc}" if not isinstance(exc, _HttpFailure) else str(exc),
        )
    return report


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
