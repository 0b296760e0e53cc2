"""Engine commands: `build`, `add`, `engines`, `link`, `verify`, `gc`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from trtforge.builder.command import LAUNCHERS
from trtforge.builder.pipeline import end_orphaned_builders, ensure_engine
from trtforge.catalog import BACKEND_CHOICES, add_entry, check_name
from trtforge.cli._app import app, console, print_json
from trtforge.cli._options import BackendOption, GpuArch, JsonFlag, TrtllmPython
from trtforge.cli._progress import build_progress, bytes_progress
from trtforge.constants import DEFAULT_STALL_TIMEOUT_S
from trtforge.errors import BuildFailedError, UsageError
from trtforge.store.entries import EngineStore
from trtforge.store.links import link_engine, resolve_engine, verify_engine

if TYPE_CHECKING:
    from trtforge.cache.signing import SecretKey


@app.command()
def build(
    name: Annotated[str, typer.Argument(help="Catalogue entry to build (see engines.toml).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print {name, path, hash, cached}.")] = False,
    backend: BackendOption = None,
    gpu_arch: GpuArch = None,
    trtllm_python: TrtllmPython = None,
    launcher: Annotated[str, typer.Option(help=f"One of {', '.join(LAUNCHERS)}.")] = "auto",
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    stall_timeout: Annotated[
        float, typer.Option(help="Give up after this many seconds without log output or file growth.")
    ] = DEFAULT_STALL_TIMEOUT_S,
    force: Annotated[bool, typer.Option(help="Build even when preflight predicts it will not fit.")] = False,
    no_substitute: Annotated[
        bool, typer.Option("--no-substitute", help="Build locally even if a substituter has the engine.")
    ] = False,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="Accept substitutes without a trusted signature.")
    ] = False,
    push_to: Annotated[
        str | None, typer.Option("--push-to", help="Upload the entry to this cache URL afterwards.")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="Sign the --push-to upload ($TRTFORGE_SIGNING_KEY_FILE)."),
    ] = None,
) -> None:
    """Build an engine into the store (or find it there, or in a substituter) and link its name.

    A `pytorch` entry is not compiled: its checkpoint and LLM API arguments become the store entry. Prints the
    store path.
    """
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}")
    # A zero or negative limit would stop the builder at its first poll, reported as a stall or a timeout.
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if stall_timeout <= 0:
        raise UsageError("--stall-timeout must be a positive number of seconds")
    signing_key = None
    if push_to:
        from trtforge.cache.config import load_signing_key

        signing_key = load_signing_key(key_file)  # a bad key fails before the build, not after
    try:
        with build_progress(name) as progress:
            result = ensure_engine(
                name,
                progress=progress,
                backend=backend,
                gpu_arch=gpu_arch,
                trtllm_python=trtllm_python,
                launcher=launcher,
                timeout_s=timeout,
                stall_timeout_s=stall_timeout,
                force=force,
                substitute=not no_substitute,
                allow_unsigned=allow_unsigned,
            )
    except BuildFailedError as exc:
        # One line saying why, then the log tail, then where the whole log is.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        if exc.log_tail:
            console.print(f"[dim]--- last lines of {escape(str(exc.log_path))} ---[/]")
            console.print(escape(exc.log_tail), markup=False)
            console.print(f"[dim]--- full log: {escape(str(exc.log_path))} ---[/]")
        raise typer.Exit(exc.exit_code) from None
    if result.substituted_from:
        state = f"pulled from {result.substituted_from}"
    else:
        state = "cached" if result.cached else "built"
    console.print(f"{escape(state)}: {escape(str(result.path))}", soft_wrap=True)
    if push_to:
        _push_after_build(result.path, push_to, signing_key)
    if json_output:
        print_json(result.to_json())
    else:
        print(result.path)


def _push_after_build(path: Path, url: str, secret: SecretKey | None) -> None:
    from trtforge.cache.transfer import push_entry

    with bytes_progress(quiet=False) as progress:
        pushed = push_entry(path, url, secret=secret, progress=progress)
    state = "already in" if pushed.already_present else "pushed to"
    console.print(f"{state} {escape(url)}", soft_wrap=True)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Name of the new catalogue entry.")],
    model: Annotated[str, typer.Option(help="Hub id (org/name) or a local checkpoint directory.")],
    revision: Annotated[str | None, typer.Option(help="Hub revision (a commit sha is reproducible).")] = None,
    quantization: Annotated[str | None, typer.Option(help="e.g. NVFP4 (default: the checkpoint's).")] = None,
    tp_size: Annotated[int | None, typer.Option()] = None,
    pp_size: Annotated[int | None, typer.Option()] = None,
    max_batch_size: Annotated[int | None, typer.Option()] = None,
    max_seq_len: Annotated[int | None, typer.Option()] = None,
    max_num_tokens: Annotated[int | None, typer.Option()] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help=f"One of {', '.join(BACKEND_CHOICES)} (default auto: by the installed TensorRT-LLM)."
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an entry of the same name.")] = False,
) -> None:
    """Add an engine to the catalogue file (engines.toml or $TRTFORGE_CATALOG)."""
    entry = add_entry(
        name,
        model=model,
        replace=replace,
        revision=revision,
        quantization=quantization,
        tp_size=tp_size,
        pp_size=pp_size,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        backend=backend,
        trust_remote_code=trust_remote_code,
    )
    console.print(f"added [bold]{escape(entry.name)}[/] ({escape(entry.model)})")


@app.command()
def engines(json_output: JsonFlag = False) -> None:
    """List the engines in the store: name, backend, path, size, quantization, built, linked."""
    scan = EngineStore().scan()
    for warning in scan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    rows = [
        {
            "name": entry.name,
            "backend": entry.manifest.backend if entry.manifest else None,
            "path": str(entry.path),
            "hash": entry.hash,
            "size_bytes": entry.size_bytes,
            "quantization": entry.quantization,
            "built": entry.built_at,
            "linked": [link.name for link in entry.links],
        }
        for entry in scan.entries
    ]
    if json_output:
        print_json(rows)
        return
    table = Table("name", "backend", "path", "size", "quantization", "built", "linked")
    for entry in scan.entries:
        table.add_row(
            entry.name,
            entry.manifest.backend if entry.manifest else "?",
            str(entry.path),
            _human_bytes(entry.size_bytes),
            entry.quantization or "-",
            entry.built_at or "?",
            ", ".join(link.name for link in entry.links) or "-",
        )
    console.print(table)


@app.command()
def link(
    name: Annotated[str, typer.Argument(help="Link name.")],
    path: Annotated[Path, typer.Argument(help="Engine directory (or linked name) to point it at.")],
) -> None:
    """Point a name at an engine directory (atomic replacement of any old link)."""
    check_name(name)
    target = resolve_engine(path)
    link_path = link_engine(name, target)
    console.print(f"{escape(str(link_path))} -> {escape(str(target))}", soft_wrap=True)


@app.command()
def verify(name_or_path: Annotated[str, typer.Argument(help="Linked name or engine directory.")]) -> None:
    """Check every file of an engine against its manifest; non-zero exit on any missing or changed file.

    A directory outside the store without a manifest (an engine built elsewhere) gets its structure checked.
    """
    report = verify_engine(name_or_path)
    what = f"{report.checked_files} files" if report.has_manifest else "structure only (no manifest)"
    console.print(f"[green]ok[/] {escape(str(report.path))}: {what}", soft_wrap=True)
    unservable = _unservable_here(name_or_path, report.path)
    if unservable is not None:
        # Its files are intact (push, pull and gc still apply): only serving it here is impossible.
        console.print(f"[bold yellow]warning:[/] {escape(unservable)}", soft_wrap=True)


def _unservable_here(name_or_path: str, path: Path) -> str | None:
    """Why a verified engine cannot be served with the TensorRT-LLM installed here (none: it can, or not judged)."""
    from trtforge.engine import read_engine
    from trtforge.errors import TrtforgeError
    from trtforge.triton.compat import engine_target, tensorrt_backend_gone
    from trtforge.trtllm import installed_trtllm_version

    try:
        engine = read_engine(path)
    except TrtforgeError:
        return None
    if engine.backend != "tensorrt":
        return None
    name = Path(name_or_path).name
    return tensorrt_backend_gone(name, engine_target(engine), installed_trtllm_version())


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
) -> None:
    """Remove store entries that no link points to, and abandoned build directories."""
    store = EngineStore()
    if not dry_run:
        for sid in end_orphaned_builders(store):
            console.print(f"ended the orphaned builder session {sid}")
    plan = store.plan_gc()
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for entry in plan.entries:
        console.print(f"{'would remove' if dry_run else 'removing'} {escape(str(entry.path))}")
    for path in plan.incomplete:
        console.print(f"{'would remove' if dry_run else 'removing'} {escape(str(path))}")
    if plan.old_logs or plan.idle_locks:
        console.print(
            f"{'would remove' if dry_run else 'removing'} {len(plan.old_logs)} old build log(s) and "
            f"{len(plan.idle_locks)} unused lock file(s)"
        )
    if dry_run:
        console.print(f"would free {_human_bytes(plan.expected_freed_bytes)}")
        return
    freed = plan.execute()
    console.print(f"freed {_human_bytes(freed)}")


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
