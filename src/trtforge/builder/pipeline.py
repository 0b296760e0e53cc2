"""From a catalogue entry to a published, linked store entry: `plan_build` → `run_build`; `ensure_engine`.

plan_build(entry)   resolve every build input (backend, model revision, builder version, GPU arch) → hash
run_build(plan)     under the hash's lock: cached? else build into store/tmp/<hash>.<uuid8>.incomplete/,
                    check, copy tokenizer files, write the manifest, rename into place, link the name

A TensorRT build does its checkpoint-only work (tokenizer files, template, xgrammar info: `checkpoint_prep`)
in a child process beside the builder and hashes the rank files as it moves them (`engine_move`), so `build`
returns within a second of the engine being whole (plus reading a large engine once).

A `pytorch` entry is not built: "building" it prepares the store entry (`builder.llmapi_entry`) from the
checkpoint and the LLM API arguments, and no builder process is started.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from trtforge.builder.backend_choice import choose_backend, requested_backend
from trtforge.builder.checkpoint_prep import CheckpointPrep, PrepRequest, parallel_prep
from trtforge.builder.checks import check_engine, checkpoint_quant_algo, copy_tokenizer_files
from trtforge.builder.command import BuilderCommand, build_command
from trtforge.builder.engine_move import move_engine
from trtforge.builder.failures import FailureCause, builder_failure
from trtforge.builder.hashcache import hash_checkpoint
from trtforge.builder.llmapi_options import LlmApiOptions, llm_api_options
from trtforge.builder.preflight import preflight_build
from trtforge.builder.watchdog import BuildWatchdog, Outcome, WatchResult
from trtforge.catalog import BUILTIN_MODEL_PREFIX, CatalogEntry, ConcreteBackend, check_name, load_catalog
from trtforge.constants import (
    DEFAULT_STALL_TIMEOUT_S,
    engine_link_dirs,
    gpu_arch_override,
    logs_dir,
    trtllm_version_override,
)
from trtforge.engine import CHECKPOINT_DIR, enable_generation_logits
from trtforge.errors import BuildFailedError, CheckpointError, GpuError, TrtforgeError
from trtforge.manifest import BuildInputs, HashedFile, write_manifest
from trtforge.processes import end_orphaned_session, start_time
from trtforge.progress import BuildProgress, NullProgress, TransferAsPhases
from trtforge.store.entries import BUILD_LOG, EngineStore
from trtforge.store.links import link_engine
from trtforge.trtllm import probe_trtllm_version, resolve_python
from trtforge.untrusted import checkpoint_root, inside, read_json_object

REFERENCE_ARCH = "cpu"
# A PyTorch entry is compiled for no GPU (the LLM API picks kernels when it loads): the same entry serves on every
# GPU that can run its quantization, so the arch it was checked for stays out of its hash.
PORTABLE_ARCH = "any"
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class BuildPlan:
    """Everything resolved before building; `hash` names the store entry."""

    entry: CatalogEntry
    inputs: BuildInputs
    hash: str
    version: str
    store: EngineStore
    final_path: Path
    model_dir: Path | None  # local checkpoint (or cached hub snapshot) for checks and tokenizer files
    python: str | None  # TensorRT builds only
    launcher: str
    timeout_s: float | None
    stall_timeout_s: float | None
    # Set when TensorRT-LLM is not installed and $TRTFORGE_TRTLLM_VERSION named the version to look for:
    # only a substituter can provide the engine, and this says why a local build cannot.
    builder_missing: str | None = None
    llm_api: LlmApiOptions | None = None  # PyTorch entries: the LLM API arguments (in the hash)
    requested_backend: str = "auto"  # what the entry or --backend asked for, before "auto" was resolved

    @property
    def cached_path(self) -> Path | None:
        return self.store.find(self.hash)

    @property
    def backend(self) -> ConcreteBackend:
        """The backend the entry resolved to ("auto" never survives planning)."""
        backend = self.entry.backend
        assert backend != "auto"
        return backend


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    hash: str
    cached: bool
    link: Path | None
    substituted_from: str | None = None  # the binary cache it was pulled from instead of being built
    backend: str = "tensorrt"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "backend": self.backend,
            "path": str(self.path),
            "hash": self.hash,
            "cached": self.cached,
            "substituted_from": self.substituted_from,
        }


# A binary cache lookup for a plan's hash, made under the hash's lock: (store path, cache URL) on a hit.
Substituter = Callable[["BuildPlan"], "tuple[Path, str] | None"]


# --- planning ----------------------------------------------------------------------------------------------


def plan_build(
    entry: CatalogEntry,
    *,
    backend: str | None = None,
    gpu_arch: str | None = None,
    trtllm_python: str | None = None,
    launcher: str = "auto",
    timeout_s: float | None = None,
    stall_timeout_s: float | None = DEFAULT_STALL_TIMEOUT_S,
    force: bool = False,
    store: EngineStore | None = None,
    progress: BuildProgress | None = None,
) -> BuildPlan:
    """Resolve the build inputs of `entry` and the store path they hash to (builds nothing; a hub checkpoint for
    an engine is downloaded at its commit, see `checkpoint.snapshot`).

    Args:
        backend: `--backend` (auto, tensorrt, pytorch, reference) over the entry's own `backend`.
        progress: where a download says how it goes (default: nowhere).

    Raises:
        TensorrtBackendGoneError: a TensorRT engine asked of TensorRT-LLM 1.3 or newer (names backend "pytorch").
        GpuError: a TensorRT build with no `--gpu-arch`, no `$TRTFORGE_GPU_ARCH` and no visible GPU.
        CheckpointError: the model revision cannot be resolved, or preflight refuses the checkpoint.
        BuildFailedError: TensorRT-LLM is not installed for the chosen interpreter.
    """
    store = store or EngineStore()
    requested = requested_backend(entry, backend)
    python: str | None = None
    builder_missing: str | None = None
    llm_api: LlmApiOptions | None = None
    snapshot_content: str | None = None
    if requested == "reference":
        entry = entry.resolved("reference")
    if entry.backend == "reference" and entry.model.startswith(BUILTIN_MODEL_PREFIX):
        version, revision, arch, model_dir = _reference_inputs()
    elif entry.backend == "reference":
        # Any Hugging Face causal LM, run by transformers: no TensorRT-LLM, no NVFP4 preflight.
        from trtforge.reference.hf_engine import HF_GENERATOR_VERSION

        model_dir, revision = _resolve_model(entry, gpu_arch=None, preflight=False)
        version, arch = HF_GENERATOR_VERSION, REFERENCE_ARCH
    else:
        python = resolve_python(trtllm_python)
        try:
            version = probe_trtllm_version(python)
        except BuildFailedError as exc:
            pinned = trtllm_version_override()
            if pinned is None:
                raise
            version, builder_missing = pinned, str(exc)
        # Refused here, before any checkpoint is hashed or downloaded: an engine TensorRT-LLM cannot build.
        entry = choose_backend(entry, requested, version).entry
        if entry.backend == "tensorrt":
            arch = _target_arch(gpu_arch)
            model_dir, revision = _resolve_model(entry, gpu_arch=arch, force=force)
            if entry.local_model_dir is None:
                model_dir, snapshot_content = _hub_checkpoint_at(entry, revision, force, progress)
        else:
            # Nothing runs on the GPU to prepare the entry: its arch is checked when one is named or visible.
            builder_missing = None  # preparing needs no TensorRT-LLM, only the version it is prepared for
            model_dir, revision = _resolve_model(entry, gpu_arch=_optional_arch(gpu_arch), force=force)
            llm_api = llm_api_options(entry)
            arch = PORTABLE_ARCH
    spec = entry.build_fields()
    if snapshot_content is not None:
        spec["snapshot_content"] = snapshot_content  # what the builder reads, as a local checkpoint's hash
    if llm_api is not None:
        spec["llm_api_options"] = llm_api.to_dict()
    inputs = BuildInputs(spec, revision, version, arch)
    digest = inputs.digest()
    return BuildPlan(
        entry=entry,
        inputs=inputs,
        hash=digest,
        version=version,
        store=store,
        final_path=store.entry_path(digest, entry.name, version),
        model_dir=model_dir,
        python=python,
        launcher=launcher,
        timeout_s=timeout_s,
        stall_timeout_s=stall_timeout_s,
        builder_missing=builder_missing,
        llm_api=llm_api,
        requested_backend=requested,
    )


def _reference_inputs() -> tuple[str, str, str, Path | None]:
    from trtforge.reference.tiny import GENERATOR_VERSION, tiny_source_digest

    return GENERATOR_VERSION, tiny_source_digest(), REFERENCE_ARCH, None


def _target_arch(explicit: str | None) -> str:
    arch = _optional_arch(explicit)
    if arch is None:
        raise GpuError(
            "no GPU visible: pass --gpu-arch (e.g. sm100) or set TRTFORGE_GPU_ARCH to name the target"
        )
    return arch


def _optional_arch(explicit: str | None) -> str | None:
    """`--gpu-arch`, else `$TRTFORGE_GPU_ARCH`, else GPU 0's, checked for form; None when none is known."""
    arch = explicit or gpu_arch_override()
    if arch is None:
        from trtforge.gpu import detect_gpu_arch

        arch = detect_gpu_arch()
    if arch is None:
        return None
    arch = arch.strip().lower()
    if not re.fullmatch(r"sm\d{2,3}[a-z]?", arch):
        raise GpuError(f"GPU arch {arch!r} is not of the form sm<major><minor>, e.g. sm100")
    return arch


def _resolve_model(
    entry: CatalogEntry, *, gpu_arch: str | None, force: bool = False, preflight: bool = True
) -> tuple[Path | None, str]:
    """(checkpoint directory if one is on disk, resolved revision), after preflight for `gpu_arch`.

    Every refusal (checkpoint, architecture, fit) comes before a local checkpoint is hashed: hashing reads every
    byte of it (the hash cache spares that only when the files are unchanged since the last build).
    `preflight=False`: none (a reference model runs on the CPU, unquantized); `gpu_arch=None` with preflight:
    the checkpoint and the plan are checked, the architecture only if NVML sees a GPU.
    """
    local = entry.local_model_dir
    if local is not None:
        if not local.is_dir():
            raise CheckpointError(f"{local}: checkpoint directory not found (entry {entry.name!r})")
        # Not a Hugging Face checkpoint directory at all: refused even with --force.
        root = checkpoint_root(local)
        config = inside(root, (local / "config.json").relative_to(root))
        if config is None:
            raise CheckpointError(f"{local}: no config.json: not a Hugging Face checkpoint directory")
        read_json_object(config)
        if preflight:
            preflight_build(entry, model_dir=local, gpu_arch=gpu_arch, force=force)
        return local, f"dir:{hash_checkpoint(local)}"
    sha = resolve_hub_revision(entry.model, entry.revision)
    if preflight:
        # The snapshot holds only the small files: preflight reads the weights' headers from the hub, at `sha`.
        checked = entry.model_copy(update={"revision": sha})
        preflight_build(checked, model_dir=None, gpu_arch=gpu_arch, force=force)
    return _hub_snapshot(entry.model, sha), sha


def _hub_checkpoint_at(
    entry: CatalogEntry, commit: str, force: bool, progress: BuildProgress | None
) -> tuple[Path, str]:
    """(snapshot directory, its content hash) of a hub checkpoint at `commit`, for `--model_path`:
    `trtllm-bench build` ignores `--revision`, so the builder is given the files of the commit asked for."""
    from trtforge.builder.checkpoint_link import hub_patterns
    from trtforge.checkpoint.snapshot import download_snapshot

    say = (progress or NullProgress()).phase
    snapshot = download_snapshot(
        entry.model,
        commit,
        patterns=hub_patterns(trust_remote_code=entry.trust_remote_code),
        quantization=entry.quantization,
        check=not force,  # --force lets preflight's refusals through; the same checks here would undo that
        say=say,
    )
    say(f"hashing {entry.model}@{commit[:12]}")
    return snapshot, f"dir:{hash_checkpoint(snapshot)}"


def resolve_hub_revision(model: str, revision: str | None) -> str:
    """The commit sha a hub model's revision points to (online, else from the local HF cache).

    Raises:
        CheckpointError: the hub is unreachable and the cache does not know the revision, or access is denied.
    """
    if revision and _SHA_RE.match(revision):
        return revision
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().model_info(model, revision=revision).sha
        if sha:
            return sha
    except GatedRepoError:
        raise CheckpointError(f"{model}: gated model; request access and log in (`hf auth login`)") from None
    except RevisionNotFoundError:  # the repository exists, the revision does not
        raise CheckpointError(f"{model}: revision {revision!r} not found on the hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{model}: not found on the hub, or private and you are not logged in"
        ) from None
    except Exception:  # offline or unreachable: fall back to the cache below
        pass
    cached = try_to_load_from_cache(model, "config.json", revision=revision or "main")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        if _SHA_RE.match(snapshot.name):
            return snapshot.name
    raise CheckpointError(
        f"{model}: cannot resolve revision {revision or 'main'!r} (hub unreachable, not in the local cache); "
        "pin `revision` to a commit sha in the catalogue"
    )


def _hub_snapshot(model: str, sha: str) -> Path | None:
    """The small files of a hub checkpoint (configs, tokenizer, template) in the HF cache, if obtainable."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.jinja", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(model, revision=sha, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(model, revision=sha, allow_patterns=patterns))
    except Exception:
        return None  # the builder will say why (gated, offline...) in its own words


# --- running -----------------------------------------------------------------------------------------------


def run_build(
    plan: BuildPlan,
    *,
    progress: BuildProgress | None = None,
    link: bool = True,
    substitute: Substituter | None = None,
) -> BuildResult:
    """Build the planned engine unless the store (or a substituter) has it, publish it atomically, link its name.

    Raises:
        BuildFailedError: the builder failed, stalled or timed out (with cause, log path and tail).
        InvalidEngineError: the built engine failed the checks (nothing is published).
        CheckpointError: the checkpoint's tokenizer files or template cannot be put beside it (nothing is
            published either).
    """
    progress = progress or NullProgress()
    store = plan.store
    lock = store.lock(plan.hash)
    if store.find(plan.hash) is None and not _try_acquire(lock):
        progress.phase("waiting for another build of the same engine")
    with lock:
        end_orphaned_builders(store, plan.hash)
        existing = store.find(plan.hash)
        if existing is not None:
            return _finish(plan, existing, cached=True, link=link)
        if substitute is not None and (hit := substitute(plan)) is not None:
            return _finish(plan, hit[0], cached=False, link=link, substituted_from=hit[1])
        if plan.builder_missing is not None:
            raise BuildFailedError(
                f"{plan.builder_missing} (no substituter has {plan.entry.name!r} at hash {plan.hash})",
                cause="no_trtllm",
            )
        incomplete = store.new_incomplete(plan.hash)
        prep: CheckpointPrep | None = None
        try:
            if plan.entry.backend == "tensorrt":
                prep = _checkpoint_prep(plan)  # started by the builder's start, see `_build_tensorrt`
            timings, command, hashed = _build_into(plan, incomplete, progress, prep)
            pytorch = plan.entry.backend == "pytorch"
            # A PyTorch entry's checkpoint is in it whole: its own files are what the checks read.
            checkpoint = incomplete / CHECKPOINT_DIR if pytorch else plan.model_dir
            progress.phase("checking the entry" if pytorch else "checking the engine")
            check_engine(incomplete, plan.entry, checkpoint_quant=checkpoint_quant_algo(checkpoint))
            if prep is not None:
                _add_checkpoint_files(prep, incomplete, timings, progress)
            else:
                if pytorch:
                    copy_tokenizer_files(incomplete, checkpoint)
                _write_guided_decoding_info(incomplete, progress)
            progress.phase("hashing files and publishing")
            write_manifest(
                incomplete,
                name=plan.entry.name,
                digest=plan.hash,
                backend=plan.backend,
                inputs=plan.inputs,
                timings=timings,
                command=command,
                known=hashed,
            )
            final = store.publish(incomplete, plan.final_path)
        finally:
            if prep is not None:
                prep.close()  # ends its child if the build ends early, removes its staging
            shutil.rmtree(incomplete, ignore_errors=True)
        return _finish(plan, final, cached=False, link=link)


def _checkpoint_prep(plan: BuildPlan) -> CheckpointPrep:
    """The checkpoint work of a TensorRT build (tokenizer files, template, xgrammar info), not yet started."""
    request = PrepRequest(
        model_dir=str(plan.model_dir) if plan.model_dir is not None else None,
        hub_model=None if plan.entry.local_model_dir else plan.entry.model,
        revision=plan.inputs.model_revision,
    )
    staging = plan.store.new_scratch(plan.hash, "prep")
    return CheckpointPrep(request, staging, parallel=parallel_prep())


def _add_checkpoint_files(
    prep: CheckpointPrep, engine_dir: Path, timings: dict[str, float], progress: BuildProgress
) -> None:
    """Join the checkpoint work (started beside the builder, or done now) and put its files beside the engine."""
    waited = time.monotonic()
    if prep.running:
        progress.phase("preparing the tokenizer files")
    elif not prep.parallel:
        progress.phase("copying the tokenizer files and writing the xgrammar tokenizer info")
    result = prep.join()
    timings["prep_s"] = result.prep_s
    timings["prep_wait_s"] = time.monotonic() - waited
    result.move_into(engine_dir)
    if result.guided_off is not None:
        progress.phase(f"guided decoding stays off for this engine: {result.guided_off}")


def _write_guided_decoding_info(engine_dir: Path, progress: BuildProgress) -> None:
    """The xgrammar tokenizer info for guided decoding; an unsupported tokenizer only leaves it off."""
    from trtforge.builder.xgrammar import write_tokenizer_info

    progress.phase("writing the xgrammar tokenizer info")
    try:
        write_tokenizer_info(engine_dir)
    except CheckpointError as exc:
        progress.phase(f"guided decoding stays off for this engine: {exc}")


def end_orphaned_builders(store: EngineStore, digest: str | None = None) -> list[int]:
    """End builders whose trtforge died without ending them (SIGKILL); returns their session ids.

    With `digest`, only that hash's builder, and the caller holds its lock; without, every recorded builder
    whose lock is free (gc).
    """
    from filelock import Timeout

    ended = []
    for recorded, (sid, start) in store.recorded_builders().items():
        if digest is not None:
            if recorded == digest:
                ended += _end_orphan(store, recorded, sid, start)
            continue
        try:
            with store.lock(recorded, timeout_s=0):
                ended += _end_orphan(store, recorded, sid, start)
        except Timeout:
            continue  # its build is running: its own trtforge owns the builder
    return ended


def _end_orphan(store: EngineStore, digest: str, sid: int, start: str | None) -> list[int]:
    ended = [sid] if end_orphaned_session(sid, start).signalled else []
    store.forget_builder(digest)
    return ended


def _try_acquire(lock: object) -> bool:
    from filelock import FileLock, Timeout

    assert isinstance(lock, FileLock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def _finish(
    plan: BuildPlan, path: Path, *, cached: bool, link: bool, substituted_from: str | None = None
) -> BuildResult:
    link_path = link_engine(plan.entry.name, path, store=plan.store) if link else None
    return BuildResult(
        plan.entry.name, path, plan.hash, cached, link_path, substituted_from, backend=plan.backend
    )


def _new_log_path(plan: BuildPlan) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = logs_dir() / f"{plan.entry.name}-{plan.hash[:12]}-{stamp}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildFailedError(
            f"{path.parent}: cannot create the log directory: {exc.strerror or exc}"
        ) from None
    return path


def _build_into(
    plan: BuildPlan, dest: Path, progress: BuildProgress, prep: CheckpointPrep | None
) -> tuple[dict[str, float], list[str], dict[str, HashedFile]]:
    """Fill `dest` with the engine and its build.log; returns (timings, builder argv, files already hashed).

    `prep` (TensorRT builds) is started as soon as the builder has started."""
    log_path = _new_log_path(plan)
    command: list[str] = []
    hashed: dict[str, HashedFile] = {}
    if plan.entry.backend == "reference":
        timings = _build_reference(plan, dest, log_path, progress)
    elif plan.entry.backend == "pytorch":
        timings = _prepare_pytorch(plan, dest, log_path, progress)
    else:
        timings, command, hashed = _build_tensorrt(plan, dest, log_path, progress, prep)
    shutil.copyfile(log_path, dest / BUILD_LOG)
    log_path.unlink(missing_ok=True)  # the entry keeps its copy; failed builds keep theirs in logs/
    return timings, command, hashed


def _build_reference(
    plan: BuildPlan, dest: Path, log_path: Path, progress: BuildProgress
) -> dict[str, float]:
    from trtforge.reference.hf_engine import write_checkpoint_engine
    from trtforge.reference.tiny import write_tiny_engine

    started = time.monotonic()
    entry = plan.entry
    limits = {
        "max_batch_size": entry.max_batch_size,
        "max_seq_len": entry.max_seq_len,
        "max_num_tokens": entry.max_num_tokens,
    }
    logits = entry.gather_generation_logits
    with _phase_log(log_path, progress) as say:
        say(f"writing the reference engine {entry.name!r}")
        if entry.model.startswith(BUILTIN_MODEL_PREFIX):
            write_tiny_engine(dest, **limits, gather_generation_logits=logits, progress=say)
        else:
            checkpoint = entry.local_model_dir or _hub_checkpoint(
                entry.model, plan.inputs.model_revision, say
            )
            write_checkpoint_engine(dest, checkpoint, **limits, gather_generation_logits=logits, progress=say)
    return {"build_s": time.monotonic() - started}


def _prepare_pytorch(
    plan: BuildPlan, dest: Path, log_path: Path, progress: BuildProgress
) -> dict[str, float]:
    """A PyTorch entry: the checkpoint (hard-linked) and its LLM API arguments; no builder is started."""
    from trtforge.builder.checkpoint_link import hub_patterns
    from trtforge.builder.llmapi_entry import prepare_llmapi_entry

    assert plan.llm_api is not None
    started = time.monotonic()
    entry = plan.entry
    with _phase_log(log_path, progress) as say:
        say(f"preparing the PyTorch backend entry {entry.name!r} for TensorRT-LLM {plan.version}")
        checkpoint = entry.local_model_dir or _hub_checkpoint(
            entry.model,
            plan.inputs.model_revision,
            say,
            patterns=hub_patterns(trust_remote_code=entry.trust_remote_code),
        )
        prepare_llmapi_entry(
            dest, checkpoint, entry=entry, options=plan.llm_api, trtllm_version=plan.version, say=say
        )
    return {"prepare_s": time.monotonic() - started}


def _hub_checkpoint(
    model: str, revision: str, say: Callable[[str], None], *, patterns: list[str] | None = None
) -> Path:
    """The weights, configs and tokenizer of a hub model at `revision` (downloaded into the HF cache)."""
    from huggingface_hub import snapshot_download

    from trtforge.reference.hf_engine import HUB_PATTERNS

    say(f"downloading {model}@{revision[:12]}")
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=patterns or HUB_PATTERNS))
    except Exception as exc:
        raise CheckpointError(f"{model}: cannot download the checkpoint: {exc}") from None


def _build_tensorrt(
    plan: BuildPlan, dest: Path, log_path: Path, progress: BuildProgress, prep: CheckpointPrep | None
) -> tuple[dict[str, float], list[str], dict[str, HashedFile]]:
    assert plan.python is not None
    workspace = plan.store.new_scratch(plan.hash, "workspace")
    try:
        command = build_command(
            plan.entry,
            python=plan.python,
            launcher=plan.launcher,
            workspace=workspace,
            model_path=plan.model_dir,  # a hub model's snapshot at its commit (`_hub_checkpoint_at`)
            revision=None,
        )
        result = _watch(plan, command, log_path, progress, after_start=prep.start if prep else None)
        timings = {"build_s": result.reaped_at - result.started_at}
        if result.engine_complete_at is not None:
            timings["engine_complete_s"] = result.engine_complete_at - result.started_at
            timings["reap_s"] = result.reaped_at - result.engine_complete_at
        # Same filesystem: moving the engine out of the workspace is a rename, not a second 20 GB copy; the
        # rank files are hashed as they are moved, so the manifest does not read them again.
        progress.phase("hashing the engine")
        moving = time.monotonic()
        hashed = move_engine(command.engine_dir, dest)
        timings["engine_hash_s"] = time.monotonic() - moving
        if plan.entry.gather_generation_logits:  # no trtllm-bench flag: the runtime reads it from config.json
            enable_generation_logits(dest)
        return timings, list(command.argv), hashed
    finally:
        shutil.rmtree(workspace, ignore_errors=True)  # tmp*-llm-workspace leftovers go with it


def _watch(
    plan: BuildPlan,
    command: BuilderCommand,
    log_path: Path,
    progress: BuildProgress,
    *,
    after_start: Callable[[], None] | None = None,
) -> WatchResult:
    name = plan.entry.name

    def started(pid: int) -> None:
        plan.store.record_builder(plan.hash, pid, start_time(pid))
        if after_start is not None:
            after_start()  # only now: the builder's start is never delayed by what runs beside it

    watchdog = BuildWatchdog(
        command.argv,
        env=command.env,
        workspace=command.workspace,
        engine_dir=command.engine_dir,
        world_size=plan.entry.world_size,
        log_path=log_path,
        timeout_s=plan.timeout_s,
        stall_timeout_s=plan.stall_timeout_s,
        on_line=progress.log,
        on_phase=progress.phase,
        on_started=started,
    )
    try:
        result = watchdog.run()
    finally:
        plan.store.forget_builder(plan.hash)
    if result.outcome is Outcome.COMPLETE:
        return result
    if result.outcome is Outcome.STALLED:
        raise builder_failure(
            name,
            what=f"no log output and no file growth for {plan.stall_timeout_s:g} s; builder stopped",
            log_path=log_path,
            exit_code=None,
            cause=FailureCause("stalled", "stalled"),
        )
    if result.outcome is Outcome.TIMED_OUT:
        raise builder_failure(
            name,
            what=f"not finished after --timeout {plan.timeout_s:g} s; builder stopped",
            log_path=log_path,
            exit_code=None,
            cause=FailureCause("timeout", "timed out"),
        )
    what = "builder exited without a whole engine" if result.exit_code == 0 else "builder failed"
    raise builder_failure(name, what=what, log_path=log_path, exit_code=result.exit_code)


# --- the one call serving needs ----------------------------------------------------------------------------


def ensure_engine(
    name: str,
    *,
    progress: BuildProgress | None = None,
    link: bool = True,
    backend: str | None = None,
    gpu_arch: str | None = None,
    trtllm_python: str | None = None,
    launcher: str = "auto",
    timeout_s: float | None = None,
    stall_timeout_s: float | None = DEFAULT_STALL_TIMEOUT_S,
    force: bool = False,
    substitute: bool = True,
    allow_unsigned: bool = False,
) -> BuildResult:
    """The store entry for catalogue entry `name`: the cached one, else a substituter's, else a fresh build.

    Substituters are the catalogue's `[cache]` table (or `$TRTFORGE_SUBSTITUTERS`); `substitute=False` skips
    them. `backend`: `--backend` over the entry's own (see `plan_build`). Links the name.

    Raises:
        CatalogError: `name` is not in the catalogue.
        TrtforgeError: whatever `plan_build` / `run_build` raise.
    """
    check_name(name)
    if link:
        engine_link_dirs()  # a TRTLLM_ENGINE_PATH that names no usable directory is refused before building
    entry = load_catalog().get(name)
    plan = plan_build(
        entry,
        backend=backend,
        gpu_arch=gpu_arch,
        trtllm_python=trtllm_python,
        launcher=launcher,
        timeout_s=timeout_s,
        stall_timeout_s=stall_timeout_s,
        force=force,
        progress=progress,
    )
    substituter = _substituter(progress or NullProgress(), allow_unsigned) if substitute else None
    return run_build(plan, progress=progress, link=link, substitute=substituter)


def _substituter(progress: BuildProgress, allow_unsigned: bool) -> Substituter | None:
    """Pull from the configured binary caches (None when none are configured)."""
    from trtforge.cache.config import load_cache_config
    from trtforge.cache.transfer import substitute

    config = load_cache_config()
    if not config.substituters:
        return None

    def run(plan: BuildPlan) -> tuple[Path, str] | None:
        progress.phase(f"looking for {plan.hash} in {len(config.substituters)} substituter(s)")
        return substitute(
            plan.store,
            plan.hash,
            config,
            allow_unsigned=allow_unsigned,
            progress=TransferAsPhases(progress),
            warn=progress.log,
        )

    return run


__all__ = [
    "BuildFailedError",
    "BuildPlan",
    "BuildResult",
    "TrtforgeError",
    "ensure_engine",
    "plan_build",
    "resolve_hub_revision",
    "run_build",
]


@contextlib.contextmanager
def _phase_log(log_path: Path, progress: BuildProgress) -> Iterator[Callable[[str], None]]:
    """A `say(line)` for builds that run in this process: each line appended to the build log and shown as the
    progress phase."""
    with open(log_path, "a") as log:

        def say(line: str) -> None:
            log.write(f"{line}\n")
            log.flush()
            progress.phase(line)

        yield say
