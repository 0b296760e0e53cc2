"""Finding a runnable tritonserver: a full install, or the binary bundled in nvidia-pytriton.

A full install (`$TRITON_HOME`, else `/opt/tritonserver`, e.g. the NGC `tritonserver:<yy.mm>-trtllm-python-py3`
container) is used as it is. Otherwise the wheel `nvidia-pytriton` supplies a real tritonserver with the python
backend only; its files are not laid out as `--backend-directory` expects, so trtforge assembles one from
symlinks in its scratch directory, once per Python version and pytriton location:

    $TRTFORGE_HOME/tmp/triton-backends/py3.11-<hash8>/
        python/
            libtriton_python.so           -> <site-packages>/pytriton/tritonserver/backends/python/...
            triton_python_backend_utils.py -> ...
            triton_python_backend_stub    -> <site-packages>/pytriton/tritonserver/python_backend_stubs/3.11/...

The stub embeds the shared libpython of the running interpreter, so `LD_LIBRARY_PATH` starts with that
interpreter's LIBDIR (else the loader may pick the system's libpython, whose stdlib C-extensions then fail),
followed by the wheel's bundled libraries; `PATH` starts with the interpreter's bin directory so the stub's
embedded Python finds this environment's site-packages (numpy, transformers, torch, trtforge).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trtforge import constants
from trtforge.atomic import staged_directory
from trtforge.errors import TritonError

__all__ = ["TritonDistribution", "find_tritonserver", "tritonserver_version"]

_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonDistribution:
    """A tritonserver binary with the backend directory and environment it needs to run.

    Attributes:
        binary: the `tritonserver` executable.
        backend_dir: the directory passed as `--backend-directory` (one sub-directory per backend).
        env: variables to set (over the caller's environment) when launching the binary.
        version: the Triton version when the install records it (`TRITON_VERSION`), else None.
        source: `"triton_home"` for a full install, `"pytriton"` for the bundled binary.
    """

    binary: Path
    backend_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    source: str = "triton_home"

    def has_backend(self, name: str) -> bool:
        """True when `<backend_dir>/<name>/` holds the backend's shared library (`libtriton_<name>.so`)."""
        return (self.backend_dir / name / f"libtriton_{name}.so").exists()

    def launch_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for the server process: `base` (default: ours) with `env` applied over it."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged


def find_tritonserver() -> TritonDistribution:
    """The tritonserver to launch: `$TRITON_HOME` / `/opt/tritonserver` when present, else nvidia-pytriton's.

    Raises:
        TritonError: no tritonserver is installed, or the bundled one cannot run python models here
            (no stub for this Python version, or no shared libpython).
    """
    home = constants.triton_home()
    if home is not None:
        return _full_install(home)
    package_dir = _pytriton_server_dir()
    if package_dir is None:
        raise TritonError(
            "no tritonserver found: set TRITON_HOME to a Triton install (or use the NGC tritonserver "
            "container), or install nvidia-pytriton"
        )
    return _bundled_install(package_dir)


def tritonserver_version() -> str | None:
    """The version of the tritonserver `find_tritonserver` would pick, without preparing anything.

    A full install records it in `TRITON_VERSION`; nvidia-pytriton's bundled binary records none (None), as
    does a machine with no tritonserver at all.
    """
    home = constants.triton_home()
    return _full_install(home).version if home is not None else None


def _full_install(home: Path) -> TritonDistribution:
    version_file = home / "TRITON_VERSION"
    version = version_file.read_text().strip() if version_file.is_file() else None
    return TritonDistribution(
        binary=home / "bin" / "tritonserver",
        backend_dir=home / "backends",
        env={},
        version=version or None,
        source="triton_home",
    )


def _pytriton_server_dir() -> Path | None:
    """`<site-packages>/pytriton/tritonserver` when nvidia-pytriton is installed (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        server_dir = Path(location) / "tritonserver"
        if (server_dir / "bin" / "tritonserver").is_file():
            return server_dir
    return None


def _bundled_install(server_dir: Path) -> TritonDistribution:
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / py_version / _STUB_NAME
    if not stub.is_file():
        raise TritonError(f"nvidia-pytriton has no python backend stub for Python {py_version} ({stub})")
    libdir = _shared_libpython_dir()
    libs_dir = server_dir.parent.parent / "nvidia_pytriton.libs"
    backend_dir = _prepare_backend_dir(server_dir, stub, py_version)
    library_path = [str(libdir), str(libs_dir)]
    if inherited := constants.library_path():
        library_path.append(inherited)
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(library_path),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), constants.executable_path()]),
    }
    return TritonDistribution(
        binary=server_dir / "bin" / "tritonserver",
        backend_dir=backend_dir,
        env=env,
        version=None,
        source="pytriton",
    )


def _shared_libpython_dir() -> Path:
    """The directory holding this interpreter's shared libpython, which the python backend stub links."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if ".so" not in soname:  # a static build reports libpython3.X.a
        soname = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if not libdir or not (Path(libdir) / soname).exists():
        raise TritonError(
            f"the shared library {soname} of this Python ({sys.executable}) is missing in "
            f"{libdir or '<no LIBDIR>'}: python-backend models cannot run; use a Python built with "
            "--enable-shared or set TRITON_HOME"
        )
    return Path(libdir)


def _prepare_backend_dir(server_dir: Path, stub: Path, py_version: str) -> Path:
    """Create (once, atomically) the symlinked `--backend-directory` for the bundled python backend."""
    key = hashlib.sha256(str(server_dir.resolve()).encode()).hexdigest()[:8]
    root = constants.scratch_dir() / "triton-backends"
    target = root / f"py{py_version}-{key}"
    if _backend_dir_is_complete(target):
        return target
    try:
        # A stale or broken directory from an older layout is replaced.
        with staged_directory(target) as staging:
            python_dir = staging / "python"
            python_dir.mkdir()
            for name in _PYTHON_BACKEND_FILES:
                (python_dir / name).symlink_to(server_dir / "backends" / "python" / name)
            (python_dir / _STUB_NAME).symlink_to(stub)
    except OSError as exc:
        # Another process may have won the race; its directory is as good as ours.
        if not _backend_dir_is_complete(target):
            raise TritonError(f"cannot prepare the Triton backend directory {target}: {exc}") from None
    return target


def _backend_dir_is_complete(target: Path) -> bool:
    python_dir = target / "python"
    return all((python_dir / name).exists() for name in (*_PYTHON_BACKEND_FILES, _STUB_NAME))
