"""Checks a freshly built engine must pass before it is published, and the files copied in beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trtforge.catalog import CatalogEntry
from trtforge.checkpoint.locate import read_hf_quant_config
from trtforge.checkpoint.model import HF_QUANT_CONFIG_FILE
from trtforge.engine import (
    CHAT_TEMPLATE,
    TOKENIZER_FILES,
    TOKENIZER_REQUIRED,
    EngineInfo,
    rank_file_name,
    read_engine,
)
from trtforge.errors import CheckpointError, InvalidEngineError
from trtforge.untrusted import checkpoint_root, copy_bounded, inside

# What goes beside the engine: the tokenizer, its chat template, and the generation defaults.
_COPIED_FILES = (*TOKENIZER_FILES, "generation_config.json", CHAT_TEMPLATE)


def checkpoint_quant_algo(model_dir: Path | None) -> str | None:
    """The quant_algo a ModelOpt checkpoint declares in `hf_quant_config.json` (upper case), or None."""
    if model_dir is None:
        return None
    quant = read_hf_quant_config(model_dir)
    return quant.quant_algo if quant else None


def check_engine(engine_dir: Path, entry: CatalogEntry, *, checkpoint_quant: str | None) -> EngineInfo:
    """Refuse an engine that would not serve what the entry asked for.

    Raises:
        InvalidEngineError: config.json is not an engine config, world size or rank files disagree with the
            entry, or the quantization differs from the checkpoint's (an engine that produces garbage).
    """
    info = read_engine(engine_dir)
    where = f"{engine_dir.name}/config.json"
    if info.world_size != entry.world_size:
        raise InvalidEngineError(
            f"{where}: world_size {info.world_size} but the entry asks for tp_size {entry.tp_size} × "
            f"pp_size {entry.pp_size}"
        )
    if info.backend == "tensorrt":
        ranks = sorted(path.name for path in engine_dir.glob("rank*.engine"))
        expected = sorted(rank_file_name(rank) for rank in range(info.world_size))
        if ranks != expected:
            raise InvalidEngineError(
                f"{engine_dir}: rank files {', '.join(ranks) or 'none'} do not match world_size {info.world_size}"
            )
    built = (info.quant_algo or "").upper() or None
    if checkpoint_quant and built != checkpoint_quant:
        raise InvalidEngineError(
            f"{where}: quant_algo {built} but the checkpoint's {HF_QUANT_CONFIG_FILE} says {checkpoint_quant}; "
            "an engine built this way produces garbage, refusing to publish it"
        )
    if entry.quantization and built != entry.quantization:
        raise InvalidEngineError(f"{where}: quant_algo {built} but the entry asks for {entry.quantization}")
    return info


def copy_tokenizer_files(
    engine_dir: Path,
    model_dir: Path | None,
    *,
    hub_model: str | None = None,
    revision: str | None = None,
) -> list[str]:
    """Copy the tokenizer files and chat template from the checkpoint beside the engine.

    Only regular files inside the checkpoint are copied (a hub snapshot's links into its repository's blobs
    count as inside), bounded in size, as new files of our own mode. Files missing locally are downloaded from
    the hub (hub models only). Returns the names copied.

    Raises:
        CheckpointError: no tokenizer could be found for the engine, or a tokenizer file is a link outside the
            checkpoint, a FIFO or device, or too large.
    """
    copied: list[str] = []
    if model_dir is not None:
        directory = model_dir.resolve()
        root = checkpoint_root(directory)
        for name in _COPIED_FILES:
            source = inside(root, (directory / name).relative_to(root))
            if source is not None:
                copy_bounded(source, engine_dir / name)
                copied.append(name)
    if hub_model and not any((engine_dir / name).is_file() for name in TOKENIZER_REQUIRED):
        copied += _download_tokenizer(engine_dir, hub_model, revision)
    if not any((engine_dir / name).is_file() for name in TOKENIZER_REQUIRED):
        where = model_dir or hub_model
        raise CheckpointError(
            f"{where}: no tokenizer files ({', '.join(TOKENIZER_REQUIRED)}) to put beside the engine"
        )
    if not (engine_dir / CHAT_TEMPLATE).is_file():
        _extract_chat_template(engine_dir)
    return copied


def _extract_chat_template(engine_dir: Path) -> None:
    """Older checkpoints keep the template inside tokenizer_config.json; serving wants the file."""
    try:
        config = json.loads((engine_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str) and template:
        (engine_dir / CHAT_TEMPLATE).write_text(template)


def _download_tokenizer(engine_dir: Path, hub_model: str, revision: str | None) -> list[str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    copied = []
    for name in _COPIED_FILES:
        if (engine_dir / name).is_file():
            continue
        try:
            path = hf_hub_download(hub_model, name, revision=revision)
        except EntryNotFoundError:
            continue
        except Exception as exc:  # offline, gated, network: report once, in one line
            raise CheckpointError(
                f"{hub_model}: cannot download {name}: {str(exc).splitlines()[0]}"
            ) from None
        shutil.copyfile(path, engine_dir / name)
        copied.append(name)
    return copied
