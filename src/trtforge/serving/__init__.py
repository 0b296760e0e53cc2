"""Serving engines: the plan (`plan_serving` → `ServePlan`, which starts nothing) and the `Stack` that runs it.

    plan = plan_serving(["tiny"])          # every check; the repository, the Triton command, ports, proxy settings
    with Stack(plan) as stack:             # repository → tritonserver → proxy → the watch on tritonserver
        stack.serve()

See docs/architecture.md.
"""

from __future__ import annotations

from trtforge.serving.plan import (
    ProxyListen,
    ServedEngine,
    ServePlan,
    TritonLaunch,
    TritonPorts,
    check_ports_free,
    plan_serving,
    repository_path,
)
from trtforge.serving.stack import Stack, StackState, TritonDiedError, curl_example

__all__ = [
    "ProxyListen",
    "ServePlan",
    "ServedEngine",
    "Stack",
    "StackState",
    "TritonDiedError",
    "TritonLaunch",
    "TritonPorts",
    "check_ports_free",
    "curl_example",
    "plan_serving",
    "repository_path",
]
