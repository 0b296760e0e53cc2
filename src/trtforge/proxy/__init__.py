"""The OpenAI-compatible proxy in front of Triton's `tensorrt_llm` model. See docs/architecture.md.

settings = ProxySettings.from_engine("tiny", read_engine(path), "127.0.0.1:8001")
run_server(make_proxy(settings, host="127.0.0.1", port=9000))      # foreground, until SIGINT/SIGTERM
"""

from __future__ import annotations

from trtforge.proxy.app import (
    ProxyStartError,
    build_app,
    make_proxy,
    make_server,
    run_server,
)
from trtforge.proxy.settings import ProxySettings

__all__ = [
    "ProxySettings",
    "ProxyStartError",
    "build_app",
    "make_proxy",
    "make_server",
    "run_server",
]
