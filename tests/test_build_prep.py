"""A TensorRT build's checkpoint work (tokenizer files, template, xgrammar info) runs in a child process beside
the builder (`builder.checkpoint_prep`): same entry as doing it afterwards, failures publish nothing and leave
no process behind, and the build's own process never imports transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import write_nvfp4_checkpoint
from trtforge.builder.checkpoint_prep import PREP_MODE_ENV, CheckpointPrep, PrepRequest
from trtforge.builder.pipeline import ensure_engine
from trtforge.catalog import add_entry
from trtforge.errors import BuildFailedError, CheckpointError, InvalidEngineError, TrtforgeError
from trtforge.store.entries import EngineStore
from trtforge.store.links import verify_engine

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The stand-in builder, a target arch and a catalogue entry `small`; returns its checkpoint."""
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("TRTFORGE_GPU_ARCH", "sm100")
    monkeypatch.setenv("TRTFORGE_STANDIN_PIDFILE", str(tmp_path / "builder.pids"))
    checkpoint = write_nvfp4_checkpoint(tmp_path / "small-nvfp4", tiny=True)
    add_entry("small", model=str(checkpoint), quantization="NVFP4", max_seq_len=2048, max_num_tokens=2048)
    return checkpoint


def _prep_children(store: EngineStore) -> list[int]:
    """Live checkpoint-work children of this store (found by their command line, which names the staging)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        ours = any(arg.startswith(str(store.root).encode()) for arg in argv)
        if b"trtforge.builder.checkpoint_prep" in argv and ours and state != "Z":
            found.append(int(entry.name))
    return found


def _assert_nothing_published(builder_pids: Path) -> None:
    store = EngineStore()
    assert store.scan().entries == ()
    assert not (Path(os.environ["TRTLLM_ENGINE_PATH"]) / "small").exists()
    tmp = store.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []  # no incomplete entry, workspace or staging left
    assert _prep_children(store) == []
    pids = [int(line) for line in builder_pids.read_text().split()] if builder_pids.exists() else []
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_beside_the_builder_and_after_it_publish_the_same_entry(
    builder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parallel = ensure_engine("small", stall_timeout_s=30)
    monkeypatch.setenv("TRTFORGE_HOME", str(tmp_path / "serial-home"))
    monkeypatch.setenv("TRTLLM_ENGINE_PATH", str(tmp_path / "serial-links"))
    monkeypatch.setenv(PREP_MODE_ENV, "serial")
    serial = ensure_engine("small", stall_timeout_s=30)
    assert serial.hash == parallel.hash and serial.path != parallel.path

    def files(path: Path) -> dict[str, object]:
        manifest = json.loads((path / "trtforge.json").read_text())
        assert "prep_s" in manifest["timings"] and "prep_wait_s" in manifest["timings"]
        listed: dict[str, object] = manifest["files"]
        listed.pop("build.log")  # timestamps and paths differ from build to build
        return listed

    assert files(parallel.path) == files(serial.path)
    assert {"tokenizer.json", "chat_template.jinja", "xgrammar_tokenizer_info.json"} <= set(
        files(parallel.path)
    )
    assert (parallel.path / "chat_template.jinja").read_text() == (
        builder / "chat_template.jinja"
    ).read_text()
    assert verify_engine(str(parallel.path)).ok
    assert verify_engine(str(serial.path)).ok


def test_the_build_process_never_imports_transformers(builder: Path) -> None:
    script = (
        "import sys\n"
        "from trtforge.builder.pipeline import ensure_engine\n"
        "result = ensure_engine('small', stall_timeout_s=30)\n"
        "print((result.path / 'xgrammar_tokenizer_info.json').is_file(), 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.split() == ["True", "False"]


@pytest.mark.parametrize("broken", ["template-is-a-directory", "no-tokenizer"])
def test_a_failing_checkpoint_step_publishes_nothing(builder: Path, tmp_path: Path, broken: str) -> None:
    if broken == "template-is-a-directory":
        (builder / "chat_template.jinja").unlink()
        (builder / "chat_template.jinja").mkdir()
        (builder / "chat_template.jinja" / "part.jinja").write_text("{{ messages }}")
        expected = "chat_template.jinja"
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (builder / name).unlink()
        expected = "no tokenizer files"
    with pytest.raises(CheckpointError, match=expected) as info:
        ensure_engine("small", stall_timeout_s=30)
    assert "\n" not in str(info.value)
    _assert_nothing_published(tmp_path / "builder.pids")


def test_a_builder_failure_ends_the_checkpoint_step(
    builder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "crash-oom")
    store = EngineStore()
    seen: list[int] = []

    class Progress:
        def phase(self, text: str) -> None:
            if text == "starting the builder":  # set once the builder and the checkpoint step are started
                seen.extend(_prep_children(store))

        def log(self, line: str) -> None:
            pass

    with pytest.raises(BuildFailedError) as info:
        ensure_engine("small", stall_timeout_s=30, progress=Progress())
    assert info.value.cause == "out_of_gpu_memory"
    assert len(seen) == 1  # it was running beside the builder (it needs seconds; the builder fails at once)
    assert not Path(f"/proc/{seen[0]}").exists()  # killed and reaped, not left to finish
    _assert_nothing_published(tmp_path / "builder.pids")


def test_an_engine_the_checks_refuse_is_reported_before_a_failed_checkpoint_step(
    builder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of a build that did both in turn: the engine's refusal, not the checkpoint's."""
    monkeypatch.setenv("TRTFORGE_STANDIN_MODE", "legacy-quant")  # --quantization overrides the checkpoint
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (builder / name).unlink()
    add_entry("wrong", model=str(builder), quantization="FP8", max_seq_len=2048, max_num_tokens=2048)
    with pytest.raises(InvalidEngineError, match=r"quant_algo FP8 .* says NVFP4"):
        ensure_engine("wrong", stall_timeout_s=30, force=True)
    _assert_nothing_published(tmp_path / "builder.pids")


@pytest.mark.parametrize("prep", ["parallel", "serial"])
def test_a_tokenizer_guided_decoding_cannot_use_only_leaves_it_off(
    builder: Path, monkeypatch: pytest.MonkeyPatch, prep: str
) -> None:
    monkeypatch.setenv(PREP_MODE_ENV, prep)
    config = json.loads((builder / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (builder / "tokenizer_config.json").write_text(json.dumps(config))
    phases: list[str] = []

    class Progress:
        def phase(self, text: str) -> None:
            phases.append(text)

        def log(self, line: str) -> None:
            pass

    result = ensure_engine("small", stall_timeout_s=30, progress=Progress())
    assert (result.path / "tokenizer.json").is_file()
    assert not (result.path / "xgrammar_tokenizer_info.json").exists()
    assert any(
        phase.startswith("guided decoding stays off for this engine:") and "EOS" in phase for phase in phases
    )
    assert verify_engine(str(result.path)).ok


def test_a_child_that_dies_without_an_outcome_fails_the_build_in_one_line(tmp_path: Path) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    with CheckpointPrep(PrepRequest(model_dir=str(checkpoint)), staging) as prep:
        prep.start()
        pid = prep.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
        with pytest.raises(TrtforgeError, match=r"failed \(exit status -9\)") as info:
            prep.join()
        assert "\n" not in str(info.value)
    assert not staging.exists()
    assert not Path(f"/proc/{pid}").exists()  # reaped
