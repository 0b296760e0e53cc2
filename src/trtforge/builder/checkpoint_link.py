"""A checkpoint's files taken into a PyTorch store entry: hard-linked when on the same filesystem, else copied.

The entry must be self-contained (verify, gc, push/pull work on it as on an engine) without a second 20 GB on
disk: a hard link shares the checkpoint's (or the HF cache blob's) inode, so it costs nothing and outlives both
the checkpoint and `gc`-ing the entry. Across filesystems (EXDEV) or where linking is not allowed (EPERM, e.g.
`fs.protected_hardlinks` for another user's file), the file is copied.

The checkpoint is untrusted (trtforge.untrusted): only known file names at its top are taken (weights as
safetensors, never pickles; custom code only with trust_remote_code), each must resolve to a regular file inside
the checkpoint, and what lands in the entry is checked to be that very file (same device and inode for a link;
a copy is read from the descriptor that was checked), so a file swapped for a symlink meanwhile is never taken.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from trtforge.engine import CHAT_TEMPLATE, TOKENIZER_FILES
from trtforge.errors import CheckpointError
from trtforge.untrusted import checkpoint_root, inside, open_regular

__all__ = ["CHECKPOINT_PATTERNS", "LinkReport", "hub_patterns", "link_checkpoint"]

# What the LLM API reads from a checkpoint directory: configs (hf_quant_config.json first for ModelOpt
# quantization), safetensors weights with their index, the tokenizer and the chat template.
CHECKPOINT_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "hf_quant_config.json",
    "dtypes.json",
    "model.safetensors.index.json",
    "*.safetensors",
    *TOKENIZER_FILES,
    CHAT_TEMPLATE,
    "*.tiktoken",
)
REMOTE_CODE_PATTERNS: tuple[str, ...] = ("*.py",)
# Linking is not possible here: copy instead.
_COPY_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass
class LinkReport:
    """Which files were hard-linked and which copied (relative names)."""

    linked: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return sorted([*self.linked, *self.copied])


def hub_patterns(*, trust_remote_code: bool) -> list[str]:
    """`snapshot_download` allow-patterns for the files `link_checkpoint` takes."""
    return [*CHECKPOINT_PATTERNS, *(REMOTE_CODE_PATTERNS if trust_remote_code else ())]


def link_checkpoint(source: Path, dest: Path, *, trust_remote_code: bool = False) -> LinkReport:
    """Fill the new directory `dest` with the checkpoint files of `source` (links where possible).

    Raises:
        CheckpointError: a file leads outside the checkpoint or is not a regular file, was swapped while being
            taken, there are no safetensors weights, or a file cannot be copied.
    """
    directory = Path(os.path.realpath(source))
    root = checkpoint_root(directory)
    patterns = hub_patterns(trust_remote_code=trust_remote_code)
    dest.mkdir()
    report = LinkReport()
    for name in sorted(os.listdir(directory)):
        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            continue
        real = inside(root, (directory / name).relative_to(root))
        if real is None:
            continue  # a dangling link: as good as absent
        if _link_or_copy(real, dest / name, shown=directory / name):
            report.linked.append(name)
        else:
            report.copied.append(name)
    if not any(name.endswith(".safetensors") for name in report.files):
        raise CheckpointError(f"{source}: no *.safetensors weights (the PyTorch backend entry needs them)")
    return report


def _link_or_copy(real: Path, target: Path, *, shown: Path) -> bool:
    """Hard-link `real` at `target` (True), or copy it (False); either way exactly the file that was checked."""
    fd = open_regular(real, shown=shown)
    with os.fdopen(fd, "rb") as handle:
        checked = os.fstat(handle.fileno())
        try:
            os.link(real, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _COPY_ERRNOS:
                raise CheckpointError(
                    f"{shown}: cannot link it into the entry: {exc.strerror or exc}"
                ) from None
        else:
            landed = os.lstat(target)
            if stat.S_ISREG(landed.st_mode) and (landed.st_dev, landed.st_ino) == (
                checked.st_dev,
                checked.st_ino,
            ):
                return True
            target.unlink()
            raise CheckpointError(f"{shown}: changed while it was being taken into the entry; refusing it")
        try:
            with open(target, "xb") as out:
                shutil.copyfileobj(handle, out, length=4 << 20)
        except OSError as exc:
            raise CheckpointError(f"{shown}: cannot copy it into the entry: {exc.strerror or exc}") from None
    return False
