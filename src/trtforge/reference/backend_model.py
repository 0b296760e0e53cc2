"""Reference `tensorrt_llm` model: the TensorRT-LLM backend's tensor contract, run by transformers on CPU/GPU.

Copied into generated model repositories as `tensorrt_llm/1/model.py` (Triton python backend, decoupled), with
its sibling files beside it (`trtforge.reference.reference_backend_files` lists them; Triton puts the version
directory on `sys.path`), so it imports only numpy, torch, transformers, triton_python_backend_utils, those
siblings and the standard library:
- `trtllm_contract`: request tensors → a `GenerationRequest`, results → response tensors, refusals (a request the
  contract does not allow is refused with INVALID_ARG and a message starting `invalid request: `).
- `refbackend_scheduler`: the worker thread, in-flight batching, streaming, stops and cancellation.
- `refbackend_decoder`: the transformers model and the token choice (greedy, sampling, penalties).
- `refbackend_guides`: guided decoding with xgrammar.
- `prompt_limit` (`trtforge/prompt_limit.py`): the longest prompt, by the TensorRT-LLM runtime's rule, with the
  `enable_chunked_context` parameter as the real backend reads it.

This file is the Triton model: it reads the config's parameters and the engine's limits, loads the model and
hands every request to the scheduler. `return_generation_logits` needs an engine whose build_config has
`gather_generation_logits` (as TensorRT-LLM needs the engine built for it); a request for them from another
engine is refused. Prompt text is never logged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import triton_python_backend_utils as pb_utils

# Type-checked against the package's copies; inside Triton they are sibling files (see trtllm_contract).
if TYPE_CHECKING:
    from trtforge.prompt_limit import CHUNKED_CONTEXT_NEEDS, engine_runtime_limits
    from trtforge.reference.refbackend_decoder import Decoder
    from trtforge.reference.refbackend_guides import Guides
    from trtforge.reference.refbackend_scheduler import Scheduler
    from trtforge.triton.models.common.trtllm_contract import ModelLimits, parse_parameters
else:
    from prompt_limit import CHUNKED_CONTEXT_NEEDS, engine_runtime_limits
    from refbackend_decoder import Decoder
    from refbackend_guides import Guides
    from refbackend_scheduler import Scheduler
    from trtllm_contract import ModelLimits, parse_parameters


def _engine_limits(
    engine_dir: Path, hf_max_positions: int, *, chunked_context: bool
) -> tuple[int, int, bool]:
    """max_seq_len, the longest prompt and whether generation logits are gathered, from config.json, as the
    TensorRT-LLM runtime decides them (`prompt_limit`), chunked context on or off.

    Raises:
        TritonModelException: chunked context on an engine that cannot take it (the runtime refuses it too), or
            a size in config.json that is not a positive whole number.
    """
    try:
        config = json.loads((engine_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    build = config.get("build_config") or {}
    if not build.get("max_seq_len"):
        build = {**build, "max_seq_len": hf_max_positions}
    try:
        runtime = engine_runtime_limits({**config, "build_config": build})
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"{engine_dir / 'config.json'}: {exc}") from None
    if chunked_context and not runtime.chunked_context_possible:
        raise pb_utils.TritonModelException(f"enable_chunked_context is set, but {CHUNKED_CONTEXT_NEEDS}")
    gather = bool(build.get("gather_generation_logits") or build.get("gather_all_token_logits"))
    return runtime.max_seq_len, runtime.prompt_limit(chunked_context=chunked_context), gather


class TritonPythonModel:
    """The `tensorrt_llm` model of a trtforge model repository serving a reference engine."""

    def initialize(self, args: dict[str, str]) -> None:
        self.log = pb_utils.Logger
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "the reference tensorrt_llm model needs model_transaction_policy { decoupled: true }"
            )
        params = parse_parameters(model_config, self.log)
        if params.max_beam_width != 1:
            self.log.log_warn(f"max_beam_width {params.max_beam_width} ignored: the reference backend uses 1")
        engine_dir = Path(params.gpt_model_path)
        model_dir = engine_dir / "hf_model"
        if not model_dir.is_dir():
            raise pb_utils.TritonModelException(f"{model_dir} does not exist: not a reference engine")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        decoder = Decoder(model_dir, device)
        max_seq_len, max_input_len, gather = _engine_limits(
            engine_dir,
            decoder.model.config.max_position_embeddings,
            chunked_context=params.enable_chunked_context,
        )
        guides = Guides(
            Path(params.tokenizer_dir) if params.tokenizer_dir else engine_dir, decoder.vocab_size
        )
        limits = ModelLimits(max_input_len, generation_logits=gather, name="the reference backend")
        self.scheduler = Scheduler(
            decoder, params, limits, max_seq_len=max_seq_len, log=self.log, guides=guides
        )
        self.log.log_info(f"reference tensorrt_llm model ready on {device} (engine {engine_dir})")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.scheduler.submit(request)
        return None

    def finalize(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown()
