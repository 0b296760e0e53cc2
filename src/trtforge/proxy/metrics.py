"""Prometheus metrics of the proxy, named and bucketed like vLLM's so existing dashboards read them.

Each app has its own registry (several proxies may live in one process, as in tests). Per model:

    trtforge:requests_total                   counter    requests for a served model, by api (chat,
                                                         completions, responses, messages)
    trtforge:time_to_first_token_seconds      histogram  request sent to Triton → first token
    trtforge:inter_token_latency_seconds      histogram  gap between streamed tokens
    trtforge:e2e_request_latency_seconds      histogram  request sent to Triton → last token
    trtforge:request_prompt_tokens            histogram  prompt length of finished requests
    trtforge:request_generation_tokens        histogram  generated tokens of finished requests
    trtforge:prompt_tokens_total              counter
    trtforge:generation_tokens_total          counter
    trtforge:request_success_total            counter    by finished_reason (stop, length, abort)
    trtforge:num_requests_running             gauge      generating (first token received)
    trtforge:num_requests_waiting             gauge      sent to Triton, no token yet (queued or prefilling)

`requests_total` counts a request once its route has resolved the model: every request for a served model,
including those then refused (context too long, Triton unavailable, ...). Requests refused before that (bad JSON,
a missing field, an unknown model, a wrong API key) are not counted: their `model` is whatever the client sent,
and an unbounded label set is what Prometheus warns against.

With several workers (`proxy.workers`) each is a process of its own: prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor) keeps every worker's values in files of one directory, and
`render` reads them all, so `/metrics` from any worker shows the sums over the workers: counters and histograms
added up, the two gauges summed over the live workers (`livesum`).

Triton's own metrics (queue and compute times per model) stay on tritonserver's metrics port.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST

ProxyApi = Literal["chat", "completions", "responses", "messages"]
"""The wire formats the proxy speaks: the `api` label of `trtforge:requests_total`."""

_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class ProxyMetrics:
    """The collectors of one proxy app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Read as prometheus-client reads it (once, at its import): set, this process writes its values there.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        labels = ["model_name"]
        r = self.registry
        self.requests = Counter(
            "trtforge:requests",
            "Requests for a served model, by API (counted before they are checked).",
            [*labels, "api"],
            registry=r,
        )
        self.ttft_s = Histogram(
            "trtforge:time_to_first_token_seconds",
            "Time to first token in seconds.",
            labels,
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )
        self.itl_s = Histogram(
            "trtforge:inter_token_latency_seconds",
            "Time between streamed tokens in seconds.",
            labels,
            buckets=_ITL_BUCKETS_S,
            registry=r,
        )
        self.e2e_s = Histogram(
            "trtforge:e2e_request_latency_seconds",
            "End-to-end generation latency in seconds.",
            labels,
            buckets=_E2E_BUCKETS_S,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "trtforge:request_prompt_tokens",
            "Prompt tokens of finished requests.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.generation_tokens = Histogram(
            "trtforge:request_generation_tokens",
            "Generated tokens of finished requests.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens_total = Counter(
            "trtforge:prompt_tokens", "Prompt tokens processed.", labels, registry=r
        )
        self.generation_tokens_total = Counter(
            "trtforge:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.success = Counter(
            "trtforge:request_success",
            "Finished generations by finish reason.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.running = Gauge(
            "trtforge:num_requests_running",
            "Generations producing tokens.",
            labels,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "trtforge:num_requests_waiting",
            "Generations sent to Triton that have no token yet.",
            labels,
            registry=r,
            multiprocess_mode="livesum",
        )

    def count_request(self, model: str, api: ProxyApi) -> None:
        """One request for the served `model` through `api` (call once the route has resolved the model)."""
        self.requests.labels(model, api).inc()

    def track(self, model: str, prompt_tokens: int) -> GenerationTimer:
        """Start timing one generation (call when it is sent to Triton)."""
        self.waiting.labels(model).inc()
        return GenerationTimer(self, model, prompt_tokens)

    def render(self) -> bytes:
        """The Prometheus text of this proxy: of every worker when there are several."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        # prometheus-client ships no annotations for it; one scrape reads every worker's files.
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


@dataclass
class GenerationTimer:
    """The timeline of one generation, reported to `ProxyMetrics` as tokens arrive and once at the end."""

    metrics: ProxyMetrics
    model: str
    prompt_tokens: int
    started_s: float = field(default_factory=time.monotonic)
    last_token_s: float | None = None
    tokens: int = 0
    done: bool = False
    # The labelled inter-token histogram, looked up once: `labels()` takes a lock and a dict lookup per token.
    _itl: Any = field(default=None, repr=False)

    def on_tokens(self, count: int, *, streamed: bool) -> None:
        """`count` new tokens arrived in one response (streamed responses hold one each)."""
        now = time.monotonic()
        m = self.metrics
        if self.last_token_s is None:
            m.ttft_s.labels(self.model).observe(now - self.started_s)
            m.waiting.labels(self.model).dec()
            m.running.labels(self.model).inc()
        elif streamed:
            if self._itl is None:
                self._itl = m.itl_s.labels(self.model)
            self._itl.observe(now - self.last_token_s)
        self.last_token_s = now
        self.tokens += count

    def finish(self, reason: str) -> None:
        """The generation ended (`stop`, `length` or `abort`); idempotent."""
        if self.done:
            return
        self.done = True
        m, model = self.metrics, self.model
        (m.running if self.last_token_s is not None else m.waiting).labels(model).dec()
        m.success.labels(model, reason).inc()
        m.prompt_tokens_total.labels(model).inc(self.prompt_tokens)
        m.generation_tokens_total.labels(model).inc(self.tokens)
        if reason != "abort":
            m.e2e_s.labels(model).observe(time.monotonic() - self.started_s)
            m.prompt_tokens.labels(model).observe(self.prompt_tokens)
            m.generation_tokens.labels(model).observe(self.tokens)
