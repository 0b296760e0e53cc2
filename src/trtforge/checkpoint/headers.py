"""Safetensors headers: an 8-byte little-endian length and a JSON header naming every tensor's dtype, shape and
byte range, read (bounded, regular files only) and checked entry by entry, never the weights after them."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtforge.checkpoint.model import TensorInfo, is_count, short_repr
from trtforge.errors import CheckpointError
from trtforge.untrusted import SAFETENSORS_HEADER_LIMIT, open_regular, parse_json_object

# No real tensor has more dimensions than this (convolutions have 5); more is a hostile header.
MAX_TENSOR_RANK = 8


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), without the data.

    Only a regular file is read (a FIFO or device is refused, never waited on), and at most
    `SAFETENSORS_HEADER_LIMIT` bytes of header. Every tensor entry is checked (see `_check_header_entry`).

    Raises:
        CheckpointError: the file is missing, truncated, not safetensors or malformed — naming the file.
    """
    with os.fdopen(open_regular(path), "rb") as f:
        try:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > SAFETENSORS_HEADER_LIMIT:
                raise CheckpointError(
                    f"{path}: not a safetensors file (header length {length:,} is above the "
                    f"{SAFETENSORS_HEADER_LIMIT:,}-byte limit)"
                )
            size = os.fstat(f.fileno()).st_size
            if size < 8 + length:
                raise CheckpointError(f"{path}: truncated safetensors header ({size - 8} of {length} bytes)")
            raw = f.read(length)
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable: {exc.strerror or exc}") from None
    if len(raw) < length:
        raise CheckpointError(f"{path}: truncated safetensors header ({len(raw)} of {length} bytes)")
    try:
        header = parse_json_object(raw, path)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("not valid JSON", "corrupt safetensors header", 1)) from None
    data_end = 0
    for name, meta in header.items():
        if name != "__metadata__":
            data_end = max(data_end, _check_header_entry(path, name, meta))
    if size < 8 + length + data_end:
        raise CheckpointError(
            f"{path}: truncated: {size} bytes on disk, the header describes {8 + length + data_end}"
        )
    return header


def _check_header_entry(path: Path, name: str, meta: Any) -> int:
    """Refuse a tensor entry that is not {dtype: str, shape: [int ≥ 0…], data_offsets: [begin ≤ end]}.

    Returns the entry's end offset.
    """
    where = f"{path}: tensor {short_repr(name)}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: header entry is {type(meta).__name__}, not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f"{where}: dtype is {short_repr(dtype)}, not a dtype name")
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK or not all(is_count(d) for d in shape):
        raise CheckpointError(
            f"{where}: shape is {short_repr(shape)}, expected at most {MAX_TENSOR_RANK} non-negative integers"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets is {short_repr(offsets)}, expected [begin, end]")
    begin, end = offsets
    if begin > end:
        raise CheckpointError(f"{where}: data_offsets {offsets} end before they begin")
    return int(end)


def tensors_from_header(header: Mapping[str, Any], file_name: str) -> list[TensorInfo]:
    """Tensors of a header `read_safetensors_header` has checked."""
    return [
        TensorInfo(name, meta["dtype"], tuple(meta["shape"]), file_name)
        for name, meta in header.items()
        if name != "__metadata__"
    ]
