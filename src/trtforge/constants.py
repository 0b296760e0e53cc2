"""Locations and defaults. The only module that reads the environment, and only when called.

Other modules ask through the accessors below (`trtforge_home()`, `aws_variables()`, ...); they may still pass a
copy of the environment to a process they start.

Layout (defaults):

    $TRTFORGE_HOME (~/.cache/trtforge)/
        store/<hash>-trtllm-engine-<name>-<version>/   content-addressed engines (see trtforge.store)
        store/.locks/<hash>.lock                       one lock per build hash
        tmp/                                           scratch (triton runtime, workspaces)
    ~/.cache/trtllm-engines/<name> -> store path       name links ($TRTLLM_ENGINE_PATH overrides)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from trtforge.errors import UsageError

DEFAULT_PROXY_HOST = "127.0.0.1"
DEFAULT_PROXY_PORT = 9000
# The largest request body the proxy reads (`--max-body-bytes`); larger ones get a 413 before parsing.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# The proxy's store of Responses (`store: true`, `previous_response_id`): in memory, oldest evicted first
# (`--responses-store-max`, `--responses-store-bytes`, `--responses-store-ttl`).
DEFAULT_RESPONSES_STORE_MAX = 1024
DEFAULT_RESPONSES_STORE_BYTES = 64 * 1024 * 1024
DEFAULT_RESPONSES_STORE_TTL_S = 24 * 3600.0
DEFAULT_TRITON_HTTP_PORT = 8000
DEFAULT_TRITON_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002

TINY_ENGINE_NAME = "tiny"

# The share of free GPU memory the `tensorrtllm` backend gives the KV cache when its config does not say.
DEFAULT_KV_CACHE_FREE_GPU_MEM_FRACTION = 0.9


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def trtforge_home() -> Path:
    """Root of trtforge's own state: `$TRTFORGE_HOME`, else `~/.cache/trtforge`."""
    env = os.environ.get("TRTFORGE_HOME")
    return Path(env).expanduser() if env else _cache_home() / "trtforge"


def store_dir() -> Path:
    return trtforge_home() / "store"


def scratch_dir() -> Path:
    return trtforge_home() / "tmp"


def engine_link_dirs() -> list[Path]:
    """Directories that hold name links, searched in order; links are written into the first.

    `$TRTLLM_ENGINE_PATH` (a `:`-separated list, like PATH) overrides `~/.cache/trtllm-engines`. Empty entries
    are skipped; a relative entry (which would depend on the working directory) or a value naming no directory
    at all is refused: "no link directories" must never mean "nothing is linked" to `gc`.

    Raises:
        UsageError: a relative entry, or only separators.
    """
    env = os.environ.get("TRTLLM_ENGINE_PATH")
    if not env:
        return [_cache_home() / "trtllm-engines"]
    directories = []
    for part in env.split(os.pathsep):
        if not part:
            continue
        path = Path(part).expanduser()
        if not path.is_absolute():
            raise UsageError(
                f"TRTLLM_ENGINE_PATH entry {part!r} is relative (it would depend on the working directory); "
                "use absolute directories"
            )
        directories.append(path)
    if not directories:
        raise UsageError(f"TRTLLM_ENGINE_PATH={env!r} names no directory; unset it or name one")
    return directories


def catalog_path() -> Path:
    """The user catalogue: `$TRTFORGE_CATALOG`, else `engines.toml` in the working directory."""
    env = os.environ.get("TRTFORGE_CATALOG")
    return Path(env).expanduser() if env else Path.cwd() / "engines.toml"


def triton_home() -> Path | None:
    """A full Triton install (`$TRITON_HOME`, else `/opt/tritonserver`) when one exists."""
    env = os.environ.get("TRITON_HOME")
    candidates = [Path(env)] if env else [Path("/opt/tritonserver")]
    for home in candidates:
        if (home / "bin" / "tritonserver").is_file():
            return home
    return None


# --- engine builds ---

DEFAULT_STALL_TIMEOUT_S = 900.0


def logs_dir() -> Path:
    """Build logs while a build runs (a published engine keeps its own copy as `build.log`)."""
    return trtforge_home() / "logs"


def gpu_arch_override() -> str | None:
    """`$TRTFORGE_GPU_ARCH` (e.g. "sm100"): the build target when no GPU is visible."""
    return os.environ.get("TRTFORGE_GPU_ARCH") or None


def trtllm_python_override() -> str | None:
    """`$TRTFORGE_TRTLLM_PYTHON`: the interpreter that has TensorRT-LLM installed."""
    return os.environ.get("TRTFORGE_TRTLLM_PYTHON") or None


def hf_hub_offline() -> bool:
    """`HF_HUB_OFFLINE` is set to a true value (read at call time: huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# --- binary caches ---


def substituters_override() -> list[str] | None:
    """`$TRTFORGE_SUBSTITUTERS` (space-separated cache URLs), replacing the catalogue's `[cache]` list."""
    env = os.environ.get("TRTFORGE_SUBSTITUTERS")
    return None if env is None else env.split()


def trusted_keys_override() -> list[str] | None:
    """`$TRTFORGE_TRUSTED_KEYS` (space-separated `NAME:<base64>`), replacing the catalogue's list."""
    env = os.environ.get("TRTFORGE_TRUSTED_KEYS")
    return None if env is None else env.split()


def signing_key_file_override() -> Path | None:
    """`$TRTFORGE_SIGNING_KEY_FILE`: the secret key `push` signs with when `--key-file` is not given."""
    env = os.environ.get("TRTFORGE_SIGNING_KEY_FILE")
    return Path(env).expanduser() if env else None


def trtllm_version_override() -> str | None:
    """`$TRTFORGE_TRTLLM_VERSION`: the TensorRT-LLM version to look for in caches when none is installed."""
    return os.environ.get("TRTFORGE_TRTLLM_VERSION") or None


# --- binary cache objects on S3 (read by `cache/objects`) ---


def aws_variables(names: Iterable[str]) -> dict[str, str]:
    """The AWS settings among `names` (e.g. `AWS_ENDPOINT_URL`, `AWS_SECRET_ACCESS_KEY`) that are set, non-empty.

    The values may be secrets: callers hand them to the S3 client and never log them.
    """
    return {name: value for name in names if name.startswith("AWS_") and (value := os.environ.get(name))}


def aws_profile() -> str:
    """`$AWS_PROFILE`, else `default`."""
    return os.environ.get("AWS_PROFILE") or "default"


def aws_shared_credentials_file() -> Path:
    """`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`."""
    return Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")


def aws_config_file() -> Path:
    """`$AWS_CONFIG_FILE`, else `~/.aws/config`."""
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")


# --- the bundled tritonserver's environment (read by `triton/distribution`) ---


def library_path() -> str | None:
    """`$LD_LIBRARY_PATH` when set and non-empty (the bundled tritonserver's libraries go before it)."""
    return os.environ.get("LD_LIBRARY_PATH") or None


def executable_path() -> str:
    """`$PATH`, else the system default search path."""
    return os.environ.get("PATH", os.defpath)


# --- the reference generator (used by `reference/tiny`) ---


@contextlib.contextmanager
def tokenizers_without_threads() -> Iterator[None]:
    """`TOKENIZERS_PARALLELISM=false` for the block (the Rust tokenizers start no thread pool), then as it was."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
