"""Benchmark: what log probabilities cost end to end, next to the same requests without them, in one run.

One embedded tritonserver serving the built-in tiny engine on the reference backend (a copy whose build_config
has `gather_generation_logits`), the proxy in this process, and the official `openai` SDK. Three modes, run in
a rotating order `--repeats` times, each `--requests` streamed chat requests of exactly `--max-tokens` tokens
(`ignore_eos`), greedy:

- `plain`: no log probabilities;
- `logprobs`: `logprobs: true` (the chosen tokens' `output_log_probs` only);
- `top5`: `logprobs: true, top_logprobs: 5` (each token's `generation_logits` row crosses gRPC, the proxy
  takes a log-softmax and the top 5).

Figures: tokens/s per mode (median over repeats) and its ratio to `plain` in the same repeat.

    .venv/bin/python benchmarks/logprobs.py [--requests 8] [--max-tokens 64] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai

from trtforge.engine import read_engine
from trtforge.proxy import ProxySettings, make_server
from trtforge.reference.tiny import TINY_DEFAULTS, write_tiny_engine
from trtforge.triton.repository import write_model_repository
from trtforge.triton.server import TritonServer

MODEL = "tiny"
MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "logprobs": {"logprobs": True},
    "top5": {"logprobs": True, "top_logprobs": 5},
}
MESSAGES = [{"role": "user", "content": "Hello! How are you?"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _engine(root: Path) -> Path:
    dest = root / "engine"
    dest.mkdir()
    write_tiny_engine(dest, **TINY_DEFAULTS)
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config["build_config"]["gather_generation_logits"] = True
    config_path.write_text(json.dumps(config))
    return dest


def _run_mode(sdk: openai.OpenAI, mode: str, requests: int, max_tokens: int) -> float:
    """Tokens/s of `requests` streamed requests run one after another."""
    tokens = 0
    started = time.perf_counter()
    for _ in range(requests):
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
            **MODES[mode],
        )
        for chunk in stream:
            if chunk.usage is not None:
                tokens += chunk.usage.completion_tokens
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="trtforge-logprobs-bench-"))
    try:
        engine = read_engine(_engine(root))
        server = TritonServer(
            write_model_repository({MODEL: engine}, root / "repository"),
            http_port=_free_port(),
            grpc_port=_free_port(),
            metrics_port=_free_port(),
            log_path=root / "tritonserver.log",
        )
        with server:
            proxy = make_server(
                [ProxySettings.from_engine(MODEL, engine, server.grpc_url)],
                port=_free_port(),
                log_level="warning",
            )
            thread = threading.Thread(target=proxy.run, daemon=True)
            thread.start()
            while not proxy.started:
                if not thread.is_alive():
                    raise SystemExit("the proxy did not start")
                time.sleep(0.05)
            sdk = openai.OpenAI(
                base_url=f"http://127.0.0.1:{proxy.config.port}/v1", api_key="x", max_retries=0, timeout=600
            )
            _run_mode(sdk, "top5", 1, 4)  # warm up: first requests load lazily
            rates: dict[str, list[float]] = {mode: [] for mode in MODES}
            ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
            order = list(MODES)
            for repeat in range(args.repeats):
                rotated = order[repeat % len(order) :] + order[: repeat % len(order)]
                this = {mode: _run_mode(sdk, mode, args.requests, args.max_tokens) for mode in rotated}
                for mode, rate in this.items():
                    rates[mode].append(rate)
                    ratios[mode].append(rate / this["plain"])
            proxy.should_exit = True
            thread.join(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    result = {
        mode: {
            "tokens_per_s": round(statistics.median(rates[mode]), 1),
            "ratio_to_plain": round(statistics.median(ratios[mode]), 3),
        }
        for mode in MODES
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'mode':<10} {'tokens/s':>10} {'× plain':>8}")
    for mode, row in result.items():
        print(f"{mode:<10} {row['tokens_per_s']:>10} {row['ratio_to_plain']:>8}")


if __name__ == "__main__":
    main()
