"""A hub checkpoint at one commit, on disk: what a TensorRT build reads through `--model_path`.

`trtllm-bench build` ignores its group option `--revision` (only `throughput` and `latency` read it), so a hub id
handed to it builds the default branch whatever the catalogue pins. trtforge therefore downloads the checkpoint at
the resolved commit first (`huggingface_hub.snapshot_download` into the Hugging Face cache; with
`HF_HUB_OFFLINE` set, the cached snapshot) and builds that directory. From there the snapshot is treated exactly as
a local checkpoint directory: reads confined to its repository folder (`untrusted.checkpoint_root`: the snapshot's
links point into `../../blobs/`), the weights checked (`checkpoint.validate`), and its content hashed by the build
(`builder.hashcache`, so an unchanged snapshot is not read again) into the store hash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trtforge.checkpoint.locate import inspect_checkpoint
from trtforge.checkpoint.validate import validate_checkpoint
from trtforge.constants import hf_hub_offline
from trtforge.errors import CheckpointError
from trtforge.untrusted import checkpoint_root, inside, read_json_object

__all__ = ["download_snapshot"]


def download_snapshot(
    model: str,
    commit: str,
    *,
    patterns: Sequence[str],
    quantization: str | None = None,
    check: bool = True,
    say: Callable[[str], None] = lambda _line: None,
) -> Path:
    """The snapshot directory (resolved: `<HF cache>/models--org--name/snapshots/<commit>`) of hub `model` at
    `commit`, its files matching `patterns` downloaded (or found in the cache offline), confined and checked
    (`check`: missing shards, bad headers, dimensions…).

    Raises:
        CheckpointError: one line: the commit is not on the hub, the model is gated or unknown, the hub cannot be
            reached, offline without the snapshot cached, or the snapshot is not a whole checkpoint.
    """
    from huggingface_hub import snapshot_download

    where = "the Hugging Face cache" if hf_hub_offline() else "the hub"
    say(f"downloading {model}@{commit[:12]} from {where}")
    started = time.monotonic()
    try:
        path = Path(snapshot_download(model, revision=commit, allow_patterns=list(patterns))).resolve()
    except Exception as exc:  # huggingface_hub raises many kinds: each becomes one line
        raise _download_error(model, commit, exc) from None
    # The cache names a snapshot by its commit: anything else is not the revision that was asked for.
    if path.name != commit or checkpoint_root(path) == path:
        raise CheckpointError(f"{model}: the snapshot for {commit} is at {path}, not in the cache's layout")
    config = inside(checkpoint_root(path), (path / "config.json").relative_to(checkpoint_root(path)))
    if config is None:
        raise CheckpointError(f"{model}@{commit[:12]}: no config.json: not a Hugging Face checkpoint")
    read_json_object(config)
    if check:
        validate_checkpoint(inspect_checkpoint(path), quantization=quantization)
    say(f"{model}@{commit[:12]} on disk and checked in {time.monotonic() - started:.1f} s")
    return path


def _download_error(model: str, commit: str, exc: Exception) -> CheckpointError:
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return CheckpointError(f"{model}: gated repository: accept its terms on the hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"{model}: repository not found on the hub (or private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{model}: revision {commit} not found on the hub")
    if hf_hub_offline():
        return CheckpointError(
            f"{model}@{commit[:12]}: not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and "
            "HF_HUB_OFFLINE is set: unset it to download the checkpoint, or pass a local checkpoint directory"
        )
    if isinstance(exc, (LocalEntryNotFoundError, OSError)):
        return CheckpointError(
            f"{model}@{commit[:12]}: cannot download the checkpoint from {hf_constants.ENDPOINT} "
            f"({type(exc).__name__}); check the network, or set HF_HUB_OFFLINE=1 to use the cache"
        )
    return CheckpointError(
        f"{model}@{commit[:12]}: downloading the checkpoint failed: {type(exc).__name__}: {exc}"
    )
