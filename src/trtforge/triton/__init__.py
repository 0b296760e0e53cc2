"""Serving an engine with Triton: the model repository, the tritonserver distribution and its launcher.

    engine = read_engine(path)
    repository = write_model_repository({"tiny": engine}, dest)  # tensorrt_llm, pre/postprocessing, ensemble
    with TritonServer(repository, grpc_port=8001) as server:     # start() + wait_ready(); stop() on exit
        ...

See docs/architecture.md.
"""

from __future__ import annotations

from trtforge.triton.distribution import TritonDistribution, find_tritonserver
from trtforge.triton.repository import RepositoryOptions, model_configs, write_model_repository
from trtforge.triton.server import ServerState, TritonServer

__all__ = [
    "RepositoryOptions",
    "ServerState",
    "TritonDistribution",
    "TritonServer",
    "find_tritonserver",
    "model_configs",
    "write_model_repository",
]
