"""Prepare a PyTorch-backend store entry (TensorRT-LLM's LLM API): the checkpoint and its arguments, no engine.

Into the build directory `dest` (the pipeline then copies the tokenizer files and template to the top, writes the
xgrammar tokenizer info and the manifest, and publishes it like an engine):

    checkpoint/              the checkpoint's files, hard-linked (else copied): `builder.checkpoint_link`
    llm_api_options.yaml     `builder.llmapi_options`
    llmapi_entry.json        what `trtforge.engine.read_engine` reports about the entry, read from the checkpoint
                             as it landed in the entry (its config and quantization files)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trtforge.builder.checkpoint_link import LinkReport, link_checkpoint
from trtforge.builder.llmapi_options import LlmApiOptions
from trtforge.catalog import CatalogEntry
from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.engine import CHECKPOINT_DIR, LlmapiEntryFacts, write_llmapi_entry

__all__ = ["prepare_llmapi_entry"]

# safetensors dtype names → the torch names an engine config's pretrained_config.dtype uses.
_TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def prepare_llmapi_entry(
    dest: Path,
    checkpoint: Path,
    *,
    entry: CatalogEntry,
    options: LlmApiOptions,
    trtllm_version: str,
    say: Callable[[str], None],
) -> LinkReport:
    """Take `checkpoint` into `dest/checkpoint/`, write the LLM API arguments and the entry's facts.

    Raises:
        CheckpointError: a checkpoint file cannot be taken (see `link_checkpoint`) or its headers do not parse.
    """
    say(f"taking the checkpoint {checkpoint} into the entry")
    report = link_checkpoint(checkpoint, dest / CHECKPOINT_DIR, trust_remote_code=entry.trust_remote_code)
    say(f"{len(report.linked)} file(s) hard-linked, {len(report.copied)} copied")
    say("writing the LLM API arguments")
    options.write(dest)
    info = inspect_checkpoint(str(dest / CHECKPOINT_DIR))
    quant = info.quantization
    facts = LlmapiEntryFacts(
        trtllm_version=trtllm_version,
        architecture=info.architecture,
        dtype=_TORCH_DTYPES.get(info.dtype, info.dtype.lower()),
        quant_algo=quant.quant_algo if quant else None,
        kv_cache_quant_algo=quant.kv_cache_quant_algo if quant else None,
        tp_size=options.tensor_parallel_size,
        pp_size=options.pipeline_parallel_size,
        max_batch_size=options.max_batch_size,
        max_seq_len=options.max_seq_len,
        max_num_tokens=options.max_num_tokens,
    )
    write_llmapi_entry(dest, facts)
    return report
