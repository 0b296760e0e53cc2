"""Locating a checkpoint and reading its files: a local directory (confined to it), a Hugging Face hub id at a
revision (configs downloaded, safetensors headers by HTTP range requests), or the hub's cached snapshot when
`HF_HUB_OFFLINE` is set; hub failures become one line."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtforge.checkpoint.headers import read_safetensors_header, tensors_from_header
from trtforge.checkpoint.model import (
    CONFIG_FILE,
    HF_QUANT_CONFIG_FILE,
    INDEX_FILE,
    CheckpointInfo,
    QuantizationInfo,
    TensorInfo,
    quant_from_config,
    quant_from_hf_quant_config,
    short_repr,
)
from trtforge.constants import hf_hub_offline
from trtforge.errors import CheckpointError
from trtforge.untrusted import INDEX_LIMIT, checkpoint_root, inside, read_json_object


def inspect_checkpoint(model: str | Path, *, revision: str | None = None) -> CheckpointInfo:
    """Describe a checkpoint directory or Hugging Face hub id from its configs and safetensors headers.

    Args:
        model: a local directory, or a hub id (`org/name`) read through `huggingface_hub`
            (honours `HF_TOKEN`, `HF_HOME`, `HF_HUB_OFFLINE`).
        revision: hub revision (ignored for directories).

    Raises:
        CheckpointError: missing directory/config, unreadable headers, hub unreachable — one line.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return _inspect_dir(resolved, source=text, revision=None, root=checkpoint_root(resolved))
    if path.exists():
        raise CheckpointError(f"{text}: not a directory (pass the checkpoint directory)")
    if _looks_like_repo_id(text):
        return _inspect_hub(text, revision=revision)
    raise CheckpointError(f"{text}: no such checkpoint directory, and not a hub id (org/name)")


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/", "~"))


def _inspect_dir(
    path: Path, *, source: str, revision: str | None, root: Path | None = None
) -> CheckpointInfo:
    """Read a checkpoint directory; only regular files inside `root` (default: the directory) are read."""
    root = root or path
    config_path = _inside(root, path / CONFIG_FILE)
    if config_path is None:
        raise CheckpointError(f"{path}: no {CONFIG_FILE}: not a Hugging Face checkpoint directory")
    config = _read_json(config_path)
    hf_quant = _hf_quant_in(root, path)

    shards, missing = _local_shards(path, root)
    tensors: list[TensorInfo] = []
    for name, shard in shards:
        tensors.extend(tensors_from_header(read_safetensors_header(shard), name))
    return CheckpointInfo(
        source=source,
        path=path,
        revision=revision,
        config=config,
        hf_quant=hf_quant,
        config_quant=quant_from_config(config),
        tensors=tuple(tensors),
        files=tuple(sorted(p.name for p in path.iterdir())),
        missing_files=tuple(missing),
    )


def _inside(root: Path, path: Path) -> Path | None:
    """`untrusted.inside` for a path already under `root`."""
    return inside(root, path.relative_to(root))


def _local_shards(path: Path, root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, real path) of the shards to read (from the index when there is one) and the names it lacks."""
    index_path = _inside(root, path / INDEX_FILE)
    if index_path is not None:
        weight_map = _read_json(index_path, limit=INDEX_LIMIT).get("weight_map")
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise CheckpointError(f"{path / INDEX_FILE}: no weight_map")
        names = sorted(set(map(str, weight_map.values())))
        present: list[tuple[str, Path]] = []
        missing: list[str] = []
        for name in names:
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise CheckpointError(
                    f"{path / INDEX_FILE}: shard name {short_repr(name)} is not a file name"
                )
            real = _inside(root, path / name)
            if real is None:
                missing.append(name)
            else:
                present.append((name, real))
        return present, missing
    shards = [(p.name, _inside(root, p)) for p in sorted(path.glob("*.safetensors"))]
    found = [(name, real) for name, real in shards if real is not None]
    if not found:
        raise CheckpointError(f"{path}: no *.safetensors files and no {INDEX_FILE}")
    return found, []


def _inspect_hub(repo_id: str, *, revision: str | None) -> CheckpointInfo:
    """Read a hub repository's configs and headers (range requests), or its cached snapshot when offline."""
    if hf_hub_offline():
        return _inspect_cached_snapshot(repo_id, revision=revision)
    _probe_hub(repo_id)

    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = _read_json(Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision)))
        try:
            hf_quant_file = hf_hub_download(repo_id, HF_QUANT_CONFIG_FILE, revision=revision)
            hf_quant = quant_from_hf_quant_config(_read_json(Path(hf_quant_file)))
        except EntryNotFoundError:
            hf_quant = None
        metadata = get_safetensors_metadata(repo_id, revision=revision)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _hub_error(repo_id, exc) from None

    tensors = [
        TensorInfo(name, str(meta.dtype), tuple(int(d) for d in meta.shape), file_name)
        for file_name, file_meta in sorted(metadata.files_metadata.items())
        for name, meta in file_meta.tensors.items()
    ]
    files = {CONFIG_FILE, *metadata.files_metadata}
    if hf_quant is not None:
        files.add(HF_QUANT_CONFIG_FILE)
    return CheckpointInfo(
        source=repo_id,
        path=None,
        revision=revision,
        config=config,
        hf_quant=hf_quant,
        config_quant=quant_from_config(config),
        tensors=tuple(tensors),
        files=tuple(sorted(files)),
    )


def _probe_hub(repo_id: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after huggingface_hub's ~25 s of retries, when the endpoint cannot be reached.

    Skipped behind an HTTP(S) proxy, where a direct connection says nothing about reachability.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    from huggingface_hub import constants as hf_constants

    if getproxies().get("https") or getproxies().get("http"):
        return
    url = urlsplit(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError as exc:
        raise CheckpointError(
            f"{repo_id}: cannot reach the Hugging Face hub at {hf_constants.ENDPOINT} "
            f"({exc.strerror or type(exc).__name__}); check the network, set HF_HUB_OFFLINE=1 to use the cache, "
            "or pass a local checkpoint directory"
        ) from None


def _inspect_cached_snapshot(repo_id: str, *, revision: str | None) -> CheckpointInfo:
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"{repo_id}: not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE to read it from the hub, or pass a local checkpoint directory"
        ) from None
    # Hub cache snapshots are links into the repository's blobs/: confine reads to the repository folder.
    snapshot = snapshot.resolve()
    return _inspect_dir(snapshot, source=repo_id, revision=revision, root=checkpoint_root(snapshot))


def _hub_error(repo_id: str, exc: Exception) -> CheckpointError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return CheckpointError(f"{repo_id}: gated repository: accept its terms on the hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"{repo_id}: repository not found on the hub (or private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{repo_id}: revision not found on the hub")
    if isinstance(exc, NotASafetensorsRepoError):
        return CheckpointError(f"{repo_id}: no safetensors weights in the repository")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError)):
        return CheckpointError(
            f"{repo_id}: cannot reach the Hugging Face hub ({type(exc).__name__}); "
            "check the network, or set HF_HUB_OFFLINE=1 to use the cache, or pass a local checkpoint directory"
        )
    return CheckpointError(
        f"{repo_id}: reading from the Hugging Face hub failed: {type(exc).__name__}: {exc}"
    )


def _read_json(path: Path, *, limit: int | None = None) -> dict[str, Any]:
    """A JSON object from a config file, bounded in size and nesting (one-line `CheckpointError`)."""
    return read_json_object(path) if limit is None else read_json_object(path, limit=limit)


def read_hf_quant_config(model_dir: Path) -> QuantizationInfo | None:
    """The quantization a ModelOpt checkpoint directory declares in `hf_quant_config.json`; None without one.

    Raises:
        CheckpointError: the file is unreadable, leads outside the directory, or has fields of the wrong type.
    """
    directory = Path(model_dir).resolve()
    return _hf_quant_in(checkpoint_root(directory), directory)


def _hf_quant_in(root: Path, path: Path) -> QuantizationInfo | None:
    file = _inside(root, path / HF_QUANT_CONFIG_FILE)
    return quant_from_hf_quant_config(_read_json(file)) if file else None
