"""Stand-in for `python -m tensorrt_llm.commands.bench` (trtllm-bench): the `build` subcommand only.

It follows the real command line (`tensorrt_llm/commands/bench.py`, `tensorrt_llm/bench/build/build.py`): a click
group whose global options (--model, --model_path, --workspace, --revision, --log_level) come before `build`;
unknown flags and flags after the wrong command are rejected; `--quantization` and `--log_level` have the real
choices; `--trust_remote_code` takes a value; the sizes are `click.IntRange(min=1)` (0 and negatives are usage
errors, exit 2), `--dataset` must exist, and each option group is all-or-none as click_option_group's
`AllOptionGroup` enforces (--max_batch_size with --max_num_tokens, --target_input_len with --target_output_len);
then `apply_build_mode_settings`'s ValueErrors: more than one build option, tp × pp > 8, no --max_seq_len without
--dataset (no build option at all: BuildConfig's default max_batch_size 2048 / max_num_tokens 8192). The checkpoint's
`hf_quant_config.json` decides quant_algo, and a conflicting --quantization is an error (TensorRT-LLM 1.x); only
an explicit `--quantization NVFP4|FP8` forces an FP8 KV cache and FP8 context FMHA (and NVFP4 the nvfp4 GEMM
plugin), as build.py does — otherwise the KV cache is what the checkpoint declares. `--revision` is accepted and
ignored, as `build` ignores it (only throughput/latency read it). With `TLLM_LLMAPI_BUILD_CACHE=1` the engine is
built in the LLM API's build cache (`TLLM_LLMAPI_BUILD_CACHE_ROOT`, default `/tmp/.cache/tensorrt_llm/llmapi/`)
instead of the workspace, as `llmapi/build_cache.py` does.

Like the LLM API it writes the engine into `<workspace>/tmpXXXX-llm-workspace/tmp.engine/` first (files grow in
chunks), "loads" it, then copies it into `<workspace>/<model>/tp_{tp}_pp_{pp}/` with the tokenizer files.

Failure modes, chosen by `TRTFORGE_STANDIN_MODE`:
    hang-after-save     save the engine, then hang in shutdown (dies on SIGTERM)
    hang-ignore-term    save, then hang with SIGTERM ignored
    hung-child          spawn an MPI-worker-like child that ignores SIGTERM; hang joining it after saving
    hung-setsid-child   the same, but the child leaves the builder's session first (setsid)
    crash-oom | crash-arch | crash-gated | crash-disk   fail before the engine with the real error text
    disk-full           run out of disk space half-way through writing tmp.engine
    partial             copy half of rank0.engine, then hang silently
    partial-exit0       copy half of rank0.engine, then exit 0
    slow                a slow but healthy build: log lines every 0.5 s, then silent file growth (each silent
                        phase ends with a line saying how long it lasted)
    legacy-quant        old behaviour: --quantization overrides the checkpoint's quant_algo
Knobs: TRTFORGE_STANDIN_ENGINE_BYTES (rank file size, default 2 MiB), TRTFORGE_STANDIN_CHUNK_DELAY_S (default
0.005), TRTFORGE_STANDIN_SLOW_S (default 3), TRTFORGE_STANDIN_PIDFILE (pids of the builder and its child).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from tensorrt_llm.version import __version__

QUANT_CHOICES = ["W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W4A16_GPTQ", "FP8", "INT8", "NVFP4"]
# `click.Choice(severity_map.keys())`, tensorrt_llm/logger.py (debug and trace joined the older five on main).
LOG_LEVELS = ["internal_error", "error", "warning", "info", "verbose", "debug", "trace"]
# BuildConfig's defaults, used when no build option is given (with a warning).
DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_NUM_TOKENS = 2048, 8192
# Only these force the KV cache to FP8 (build.py: `if quant_algo in [QuantAlgo.NVFP4, QuantAlgo.FP8]`).
FP8_KV_QUANTS = ("NVFP4", "FP8")
BUILD_CACHE_ROOT = "/tmp/.cache/tensorrt_llm/llmapi/"
CHUNK_BYTES = 256 * 1024

MODE = os.environ.get("TRTFORGE_STANDIN_MODE", "")
ENGINE_BYTES = int(os.environ.get("TRTFORGE_STANDIN_ENGINE_BYTES", str(2 * 1024 * 1024)))
CHUNK_DELAY_S = float(os.environ.get("TRTFORGE_STANDIN_CHUNK_DELAY_S", "0.005"))
SLOW_S = float(os.environ.get("TRTFORGE_STANDIN_SLOW_S", "3"))

OOM_TEXT = """Traceback (most recent call last):
  File "/usr/local/lib/python3.12/dist-packages/tensorrt_llm/_tensorrt_engine/llm.py", line 612, in _build_model
    self._engine_dir, self._hf_model_dir = model_loader()
  File "/usr/local/lib/python3.12/dist-packages/tensorrt_llm/llmapi/llm_utils.py", line 566, in __call__
    self.model = model_cls.from_hugging_face(self.model_dir, mapping=self.mapping, quant_config=quant_config)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.56 GiB. GPU 0 has a total capacity of 79.11 GiB \
of which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.08 GiB memory in use."""
ARCH_TEXT = """[TensorRT-LLM][ERROR] Assertion failed: Arch unsupported for CUTLASS FP4 GEMM \
(/src/tensorrt_llm/cpp/tensorrt_llm/kernels/cutlass_kernels/fp4_gemm/fp4_gemm_template.h:221)
RuntimeError: [TensorRT-LLM][ERROR] FP4 Gemm not supported before Blackwell"""
GATED_TEXT = """Traceback (most recent call last):
  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: \
https://huggingface.co/{model}/resolve/main/config.json
huggingface_hub.errors.GatedRepoError: 401 Client Error. Cannot access gated repo for url \
https://huggingface.co/{model}/resolve/main/config.json.
Access to model {model} is restricted. You must have access to it and be authenticated to access it."""
OFFLINE_TEXT = """OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in \
the cached files. Check your internet connection or see how to run the library in offline mode."""
DISK_TEXT = "OSError: [Errno 28] No space left on device: '{path}'"


LAST_LOG = [time.monotonic()]


def log(message: str, severity: str = "I") -> None:
    print(f"[{time.strftime('%m/%d/%Y-%H:%M:%S')}] [TRT-LLM] [{severity}] {message}", flush=True)
    LAST_LOG[0] = time.monotonic()


def log_silence(what: str) -> None:
    """Slow mode: say how long the builder wrote files without a log line (tests compare it to the stall timeout)."""
    log(f"{what}: {time.monotonic() - LAST_LOG[0]:.3f} s without a log line")


def fail(text: str, code: int = 1) -> None:
    print(text, file=sys.stderr, flush=True)
    sys.exit(code)


def hang_forever() -> None:
    while True:
        time.sleep(3600)


def write_pidfile(*pids: int) -> None:
    path = os.environ.get("TRTFORGE_STANDIN_PIDFILE")
    if path:
        with open(path, "a") as handle:
            handle.write("".join(f"{pid}\n" for pid in pids))


@click.group(context_settings={"show_default": True})
@click.option("--model", "-m", required=True, help="The Huggingface name of the model to benchmark.")
@click.option(
    "--model_path", type=click.Path(), default=None, help="Path to a Huggingface checkpoint directory."
)
@click.option("--workspace", "-w", type=click.Path(), default="/tmp", help="The directory to store outputs.")
@click.option("--revision", type=str, default=None, help="The revision of the model on the hub.")
@click.option("--log_level", type=click.Choice(LOG_LEVELS), default="info")
@click.pass_context
def main(ctx: click.Context, model: str, model_path: str | None, workspace: str, revision: str | None,
         log_level: str) -> None:  # fmt: skip
    """trtllm-bench (stand-in)."""
    ctx.obj = {"model": model, "model_path": model_path, "workspace": Path(workspace), "revision": revision}


POSITIVE = click.IntRange(min=1)


@main.command("build")
@click.option("--tp_size", "-tp", type=int, default=1)
@click.option("--pp_size", "-pp", type=int, default=1)
@click.option("--quantization", "-q", type=click.Choice(QUANT_CHOICES), default=None)
@click.option("--max_seq_len", type=POSITIVE, default=None)
@click.option("--no_weights_loading", type=bool, default=False)
@click.option("--trust_remote_code", type=bool, default=False)
@click.option("--dataset", type=click.Path(exists=True, readable=True), default=None)
@click.option("--max_batch_size", type=POSITIVE, default=None)
@click.option("--max_num_tokens", type=POSITIVE, default=None)
@click.option("--target_input_len", type=POSITIVE, default=None)
@click.option("--target_output_len", type=POSITIVE, default=None)
@click.pass_obj
def build(obj: dict, tp_size: int, pp_size: int, quantization: str | None, max_seq_len: int | None,
          no_weights_loading: bool, trust_remote_code: bool, dataset: str | None, max_batch_size: int | None,
          max_num_tokens: int | None, target_input_len: int | None,
          target_output_len: int | None) -> None:  # fmt: skip
    """Build engines for benchmarking."""
    _all_or_none("Build Engine with IFB Scheduler Limits", max_batch_size=max_batch_size,
                 max_num_tokens=max_num_tokens)  # fmt: skip
    _all_or_none("[Experimental Feature] Build Engine with Tuning Heuristics Hints",
                 target_input_len=target_input_len, target_output_len=target_output_len)  # fmt: skip
    # apply_build_mode_settings: plain ValueErrors (a traceback, exit status 1), not usage errors.
    chosen = sum(bool(option) for option in (dataset, max_batch_size, target_input_len))
    if chosen > 1:
        raise ValueError("Multiple engine build options detected, please choose only one engine build option. "
                         "Exiting.")  # fmt: skip
    if chosen == 0:
        log("No engine build option is selected, use TRT-LLM default max_batch_size and max_num_tokens to build "
            "the engine.", "W")  # fmt: skip
        max_batch_size, max_num_tokens = DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_NUM_TOKENS
    if tp_size * pp_size > 8:
        raise ValueError(f"Parallelism mapping of TP{tp_size}-PP{pp_size} is currently unsupported. Please try with "
                         "a mapping with <=8 GPUs.")  # fmt: skip
    if not dataset and not max_seq_len:
        raise ValueError("Unspecified max_seq_len for engine build. Exiting.")
    if dataset is not None:
        raise click.ClickException("the stand-in does not reproduce --dataset statistics")
    if max_batch_size is None:
        max_batch_size, max_num_tokens = 2048, 8192  # the tuning heuristic's typical answer
    assert max_num_tokens is not None and max_seq_len is not None

    write_pidfile(os.getpid())
    model, workspace = obj["model"], obj["workspace"]
    log(f"Found tensorrt_llm {__version__}. Setting up build for {model} (tp={tp_size}, pp={pp_size}).")
    if MODE == "crash-gated":
        fail(GATED_TEXT.format(model=model))
    checkpoint = Path(obj["model_path"]) if obj["model_path"] else None
    if checkpoint is None:
        fail(OFFLINE_TEXT)
    assert checkpoint is not None
    hf_config = json.loads((checkpoint / "config.json").read_text())
    quant = read_quant(checkpoint)
    if quantization and quant.get("quant_algo") and quantization != quant["quant_algo"]:
        if MODE != "legacy-quant":
            fail(f"ValueError: Specified quantization {quantization} conflicts with the checkpoint's "
                 f"pre-quantized quant_algo {quant['quant_algo']} (hf_quant_config.json).")  # fmt: skip
        quant = {**quant, "quant_algo": quantization}
    elif quantization and not quant.get("quant_algo"):
        quant = {"quant_algo": quantization, "kv_cache_quant_algo": None}
    if quantization in FP8_KV_QUANTS:
        quant = {**quant, "kv_cache_quant_algo": "FP8"}  # forced, whatever the checkpoint declares

    log(f"Loading checkpoint from {checkpoint}")
    if MODE == "slow":
        deadline = time.monotonic() + SLOW_S / 2
        while time.monotonic() < deadline:
            log("Loading safetensors weights...")
            time.sleep(0.5)
    if MODE == "crash-oom":
        fail(OOM_TEXT)
    if MODE == "crash-arch":
        fail(ARCH_TEXT)
    if MODE == "crash-disk":
        fail(DISK_TEXT.format(path=workspace / "model.cache"))

    world = tp_size * pp_size
    config = engine_config(hf_config, quant, tp_size, pp_size, max_batch_size, max_num_tokens, max_seq_len)
    plugins = config["build_config"]["plugin_config"]
    plugins["use_fp8_context_fmha"] = quantization in FP8_KV_QUANTS
    if quantization == "NVFP4":
        plugins["gemm_plugin"] = "nvfp4"
    workspace.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TLLM_LLMAPI_BUILD_CACHE") == "1":
        # The LLM API's build cache: the engine is built under its root, the workspace never sees it.
        root = Path(os.environ.get("TLLM_LLMAPI_BUILD_CACHE_ROOT", BUILD_CACHE_ROOT))
        llm_workspace = root / "engines" / f"{model}-tp{tp_size}-pp{pp_size}"
        tmp_engine = llm_workspace / "engine"
        tmp_engine.mkdir(parents=True, exist_ok=True)
    else:
        llm_workspace = Path(tempfile.mkdtemp(prefix="tmp", suffix="-llm-workspace", dir=workspace))
        tmp_engine = llm_workspace / "tmp.engine"
        tmp_engine.mkdir()
    log(f"Building engine in {tmp_engine}")
    chunk_delay = CHUNK_DELAY_S * (10 if MODE == "slow" else 1)
    for rank in range(world):
        target = tmp_engine / f"rank{rank}.engine"
        if MODE == "disk-full" and rank == 0:
            grow(target, ENGINE_BYTES // 2, chunk_delay)
            fail(f"Traceback (most recent call last):\n  File \"tensorrt_llm/builder.py\", line 1021, in save\n"
                 f"{DISK_TEXT.format(path=target)}")  # fmt: skip
        grow(target, ENGINE_BYTES, chunk_delay)
    if MODE == "slow":
        log_silence("Wrote the engine")
    (tmp_engine / "config.json").write_text(json.dumps(config, indent=4))
    log(f"Total time of building all engines: 00:00:0{min(9, world)}")

    child = None
    if MODE in ("hung-child", "hung-setsid-child") or (
        os.environ.get("TLLM_WORKER_USE_SINGLE_PROCESS") != "1" and MODE.startswith("hang")
    ):
        # The MPI pool worker the executor spawns.
        child = subprocess.Popen(
            [sys.executable, "-c", WORKER_SOURCE], start_new_session=MODE == "hung-setsid-child"
        )
        write_pidfile(child.pid)
    log("Loading engine into executor (MpiPoolSession)" if child else "Loading engine into executor")

    final = workspace / model / f"tp_{tp_size}_pp_{pp_size}"
    final.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_engine / "config.json", final / "config.json")
    for rank in range(world):
        name = f"rank{rank}.engine"
        if MODE.startswith("partial") and rank == 0:
            copy_growing(tmp_engine / name, final / name, ENGINE_BYTES // 2, chunk_delay)
            if MODE == "partial-exit0":
                sys.exit(0)
            hang_forever()
        copy_growing(tmp_engine / name, final / name, ENGINE_BYTES, chunk_delay)
    if MODE == "slow":
        log_silence("Copied the engine")
    # Only the files whose names start with "tokenizer", in directory order (no special_tokens_map.json,
    # generation_config.json or chat template: trtforge copies those itself).
    for source in checkpoint.iterdir():
        if source.name.startswith("tokenizer") and source.is_file():
            shutil.copyfile(source, final / source.name)

    # llm.shutdown(): where the real one hangs, before build.py logs "ENGINE SAVED" (it logs it after the
    # shutdown returns), so a hung build never says it saved the engine.
    if MODE == "hang-ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("Shutting down executor...")
        hang_forever()
    if MODE == "hang-after-save" or child is not None:
        log("Shutting down executor... joining MPI pool")
        if child is not None:
            child.wait()
        hang_forever()
    print(f"ENGINE SAVED: {final}", flush=True)
    if tmp_engine.name == "tmp.engine":  # a build cache keeps its engines
        shutil.rmtree(llm_workspace)


def _all_or_none(group: str, **options: object) -> None:
    """click_option_group's AllOptionGroup: every option of the group, or none of them (a usage error)."""
    given = [name for name, value in options.items() if value is not None]
    if given and len(given) != len(options):
        missing = "\n".join(f"  --{name}" for name in options if name not in given)
        raise click.UsageError(
            f'All options from "{group}" option group should be specified or none should be specified. '
            f"Missing required options:\n{missing}"
        )


WORKER_SOURCE = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(3600)
"""


def read_quant(checkpoint: Path) -> dict:
    path = checkpoint / "hf_quant_config.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("quantization") or {})


def grow(path: Path, size: int, delay_s: float) -> None:
    """Write `size` bytes in chunks, as a serializer does: the file grows while it is written."""
    written = 0
    with open(path, "wb") as handle:
        while written < size:
            step = min(CHUNK_BYTES, size - written)
            handle.write(bytes([written % 251]) * step)
            handle.flush()
            written += step
            time.sleep(delay_s)


def copy_growing(source: Path, dest: Path, size: int, delay_s: float) -> None:
    with open(source, "rb") as src, open(dest, "wb") as out:
        copied = 0
        while copied < size:
            chunk = src.read(min(CHUNK_BYTES, size - copied))
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            copied += len(chunk)
            time.sleep(delay_s)


def engine_config(hf: dict, quant: dict, tp: int, pp: int, batch: int, tokens: int, seq: int) -> dict:
    """config.json in the engine schema (see trtforge.engine)."""
    algo = quant.get("quant_algo")
    return {
        "version": __version__,
        "pretrained_config": {
            "architecture": (hf.get("architectures") or ["LlamaForCausalLM"])[0],
            "dtype": hf.get("torch_dtype", "bfloat16"),
            "vocab_size": hf.get("vocab_size"),
            "hidden_size": hf.get("hidden_size"),
            "num_hidden_layers": hf.get("num_hidden_layers"),
            "num_attention_heads": hf.get("num_attention_heads"),
            "num_key_value_heads": hf.get("num_key_value_heads"),
            "head_size": hf.get("head_dim"),
            "intermediate_size": hf.get("intermediate_size"),
            "max_position_embeddings": hf.get("max_position_embeddings"),
            "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp, "gpus_per_node": 8},
            "quantization": {
                "quant_algo": algo,
                "kv_cache_quant_algo": quant.get("kv_cache_quant_algo"),
                "group_size": quant.get("group_size", 16),
                "exclude_modules": quant.get("exclude_modules", ["lm_head"]),
            },
        },
        # BuildConfig(max_batch_size, max_seq_len, max_num_tokens) as trtllm-bench makes it: max_input_len and the
        # logits flags keep BuildConfig's defaults; the plugin fields the C++ runtime requires, as trtllm-bench
        # sets them (paged context FMHA and multiple profiles on top of the defaults).
        "build_config": {
            "max_input_len": 1024,
            "max_seq_len": seq,
            "max_batch_size": batch,
            "max_beam_width": 1,
            "max_num_tokens": tokens,
            "gather_context_logits": False,
            "gather_generation_logits": False,
            "plugin_config": {
                "gpt_attention_plugin": "auto",
                "gemm_plugin": "auto",  # set by build()
                "remove_input_padding": True,
                "paged_kv_cache": True,
                "tokens_per_block": 32,
                "context_fmha": True,
                "use_paged_context_fmha": True,
                "use_fp8_context_fmha": False,  # set by build()
                "multiple_profiles": True,
                "lora_plugin": None,
            },
        },
    }


if __name__ == "__main__":
    main()
