"""Serving options: how Triton runs an engine (KV cache, scheduling, queueing, stats), not how it is built.

They come from the catalogue entry's `[engines.NAME.serve]` table and from `--option KEY=VALUE` on
`trtforge serve` / `up` (which win), and end up as `tensorrt_llm` backend parameters or model-config fields in
the generated repository. `None` leaves a parameter out of the config, so the backend uses its own default
(listed in `docs/serving.md`). Changing them never changes the engine, so they are not part of its hash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trtforge.errors import UsageError

__all__ = ["ServeOptions", "merge_serve_options", "parse_option_pairs"]

SchedulerPolicy = Literal["guaranteed_no_evict", "max_utilization"]
DecodingMode = Literal["top_k", "top_p", "top_k_top_p", "beam_search"]
_DEVICE_IDS = re.compile(r"^\d+(,\d+)*$")


class ServeOptions(BaseModel):
    """Knobs of the generated model repository; the defaults suit one engine on one node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- tensorrt_llm backend parameters (None: the backend's default) --------------------------------------
    kv_cache_free_gpu_mem_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens_in_paged_kv_cache: int | None = Field(default=None, ge=1)
    kv_cache_host_memory_bytes: int | None = Field(default=None, ge=0)
    enable_kv_cache_reuse: bool | None = None
    # None: on wherever the engine can take it (`EngineInfo.chunked_context`), so prompts may fill the context.
    enable_chunked_context: bool | None = None
    batch_scheduler_policy: SchedulerPolicy | None = None
    multi_block_mode: bool | None = None
    cuda_graph_mode: bool | None = None
    normalize_log_probs: bool | None = None
    gpu_device_ids: str | None = None
    decoding_mode: DecodingMode | None = None
    max_attention_window_size: int | None = Field(default=None, ge=1)
    stats_check_period_ms: int | None = Field(default=None, ge=1)
    iter_stats_max_iterations: int | None = Field(default=None, ge=0)
    request_stats_max_iterations: int | None = Field(default=None, ge=0)
    # The proxy asks per request too; this is the default for Triton-native clients.
    exclude_input_in_output: bool = True
    cancellation_check_period_ms: int = Field(default=100, ge=1)
    # -- Triton model-config fields -------------------------------------------------------------------------
    max_queue_size: int | None = Field(default=None, ge=0)  # dynamic_batching.default_queue_policy
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    # -- our pre/postprocessing models ----------------------------------------------------------------------
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    preprocessing_instances: int = Field(default=1, ge=1)
    postprocessing_instances: int = Field(default=1, ge=1)
    # -- the OpenAI proxy (None: the defaults for the engine's architecture; `none`: no parsing) -----------
    reasoning_parser: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    tool_parser: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")

    @field_validator("gpu_device_ids")
    @classmethod
    def _check_device_ids(cls, value: str | None) -> str | None:
        if value is not None and not _DEVICE_IDS.match(value.replace(" ", "")):
            raise ValueError("must be comma-separated GPU indices, e.g. '0,1'")
        return None if value is None else value.replace(" ", "")

    def device_ids(self) -> list[int] | None:
        return None if self.gpu_device_ids is None else [int(i) for i in self.gpu_device_ids.split(",")]


def _one_line(exc: ValidationError, where: str) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "serve"
    if error["type"] == "extra_forbidden":
        known = ", ".join(ServeOptions.model_fields)
        return f"{where}: unknown serve option {key!r} (known: {known})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {message} (got {error.get('input')!r})"


def parse_option_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (from `--option`) as a dict; a malformed one is a one-line UsageError."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(
                f"--option {pair!r}: expected KEY=VALUE, e.g. kv_cache_free_gpu_mem_fraction=0.8"
            )
        parsed[key] = value.strip()
    return parsed


def merge_serve_options(
    base: ServeOptions | None, overrides: Mapping[str, Any], *, where: str = "--option"
) -> ServeOptions:
    """`base` (e.g. the catalogue's serve table) with `overrides` applied, validated.

    Raises:
        UsageError: an unknown key or an invalid value, in one line naming it.
    """
    fields = (base or ServeOptions()).model_dump(exclude_unset=True)
    fields.update(overrides)
    try:
        return ServeOptions.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(_one_line(exc, where)) from None
