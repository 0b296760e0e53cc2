"""Checkpoint and config mistakes are one-line errors with a non-zero exit, never a traceback.

Each listed case is run through the CLI (`inspect`, `plan`); then hypothesis feeds random safetensors headers
and config.json files to the same commands in-process and asserts a result or a one-line `TrtforgeError`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from checkpoints import TINY_CONFIG, write_nvfp4_checkpoint
from trtforge.cli import app
from trtforge.errors import TrtforgeError

GOOD_TENSOR = {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 32]}


def _header_file(path: Path, header: Any) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)


def _checkpoint(root: Path, config: Any, header: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    _header_file(root / "model.safetensors", header)
    return root


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trtforge", *args], capture_output=True, text=True, timeout=120
    )


def _assert_one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


HEADER_CASES = {
    "no data_offsets": {"w": {"dtype": "BF16", "shape": [4, 4]}},
    "non-object entry": {"w": [1, 2, 3]},
    "string offsets": {"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": ["0", "32"]}},
    "negative shape": {"w": {"dtype": "BF16", "shape": [-4, 4], "data_offsets": [0, 32]}},
    "100,000 dimensions": {"w": {"dtype": "BF16", "shape": [1] * 100_000, "data_offsets": [0, 2]}},
    "string dimension": {"w": {"dtype": "BF16", "shape": ["abc"], "data_offsets": [0, 2]}},
    "float dimension": {"w": {"dtype": "BF16", "shape": [1.5], "data_offsets": [0, 2]}},
    "offsets backwards": {"w": {"dtype": "BF16", "shape": [4], "data_offsets": [32, 0]}},
    "dtype object": {"w": {"dtype": {}, "shape": [4], "data_offsets": [0, 8]}},
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_a_malformed_safetensors_header_is_one_line(tmp_path: Path, case: str) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_CONFIG, HEADER_CASES[case])
    line = _assert_one_line(_run("inspect", str(ckpt)))
    assert "model.safetensors" in line


# (config overrides, a word of the error, whether `plan` must refuse it: it does not read every field)
CONFIG_CASES: dict[str, tuple[dict[str, Any], str, bool]] = {
    "architectures object": ({"architectures": {"a": 1}}, "architecture unknown", False),
    "group_size string": (
        {"quantization_config": {"quant_algo": "NVFP4", "group_size": "x"}},
        "group_size",
        True,
    ),
    "exclude_modules int": (
        {"quantization_config": {"quant_algo": "NVFP4", "exclude_modules": 3}},
        "exclude_modules",
        True,
    ),
    "zero heads": ({"num_attention_heads": 0, "head_dim": None}, "num_attention_heads", True),
    "zero kv heads": ({"num_key_value_heads": 0}, "num_key_value_heads", True),
    "zero layers": ({"num_hidden_layers": 0}, "num_hidden_layers", True),
    "negative layers": ({"num_hidden_layers": -3}, "num_hidden_layers", True),
    "string hidden": ({"hidden_size": "abc", "head_dim": None}, "hidden_size", True),
    "nan layers": ({"num_hidden_layers": float("nan")}, "num_hidden_layers", True),
    "inf layers": ({"num_hidden_layers": float("inf")}, "num_hidden_layers", True),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_malformed_config_is_one_line_in_inspect_and_plan(tmp_path: Path, case: str) -> None:
    overrides, word, plan_refuses = CONFIG_CASES[case]
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, **overrides}))
    inspect = _run("inspect", str(ckpt))
    assert "Traceback" not in inspect.stderr, inspect.stderr
    assert inspect.returncode != 0
    assert word in inspect.stderr
    plan = _run("plan", str(ckpt), "--gpu-memory", "80GB")
    if plan_refuses:
        assert word in _assert_one_line(plan)
    else:
        assert plan.returncode == 0, plan.stderr


def test_deeply_nested_json_is_one_line(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    line = _assert_one_line(_run("inspect", str(ckpt)))
    assert "nested too deeply" in line
    (ckpt / "config.json").write_text(json.dumps(TINY_CONFIG))
    shard = next(ckpt.glob("*.safetensors"))
    raw = ("{" + '"a":{' * 50_000 + "}" * 50_001).encode()
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw)
    assert "nested too deeply" in _assert_one_line(_run("inspect", str(ckpt)))


def test_negative_sizes_never_print_fits(tmp_path: Path) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True, config={"num_hidden_layers": -64})
    result = _run("plan", str(ckpt), "--gpu-memory", "80GB")
    _assert_one_line(result)
    assert "fits" not in result.stdout + result.stderr


# --- property: random headers and configs -----------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
DIM = st.integers(-2, 2**20) | JSON_SCALARS
CONFIG_KEYS = [
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
    "intermediate_size", "vocab_size",
]  # fmt: skip
CONFIGS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            **dict.fromkeys(CONFIG_KEYS, DIM),
            "architectures": st.just(["Qwen3ForCausalLM"]) | JSON,
            "torch_dtype": st.sampled_from(["bfloat16", "float16"]) | JSON,
            "quantization_config": st.fixed_dictionaries(
                {},
                optional={
                    "quant_algo": st.just("NVFP4") | JSON,
                    "kv_cache_quant_algo": st.just("FP8") | JSON,
                    "group_size": st.just(16) | JSON,
                    "exclude_modules": st.just(["lm_head"]) | JSON,
                },
            )
            | JSON,
            "text_config": JSON,
        },
    ).map(lambda c: {**TINY_CONFIG, **c}),
    JSON,
)
TENSOR_ENTRY = st.one_of(
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["BF16", "U8", "F8_E4M3", "F32", "ZZ"]) | JSON,
            "shape": st.lists(st.integers(-1, 2**16), max_size=4) | JSON,
            "data_offsets": st.tuples(st.integers(-1, 64), st.integers(-1, 64)).map(list) | JSON,
        }
    ),
    JSON,
)
NAMES = st.sampled_from(
    [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.down_proj.weight_scale",
        "lm_head.weight",
        "x",
    ]
)
HEADERS = st.dictionaries(NAMES | st.text(max_size=6), TENSOR_ENTRY, max_size=5) | JSON


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=CONFIGS, header=HEADERS)
def test_random_checkpoints_give_a_result_or_one_line(config: Any, header: Any) -> None:
    runner = CliRunner()
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        ckpt = _checkpoint(root / "ckpt", config, header)
        for args in (["inspect", str(ckpt), "--json"], ["plan", str(ckpt), "--gpu-memory", "80GB", "--json"]):
            result = runner.invoke(app, args)
            error = result.exception
            if error is None or isinstance(error, SystemExit):
                continue
            assert isinstance(error, TrtforgeError), f"{args[0]}: {type(error).__name__}: {error}"
            assert "\n" not in str(error)
    finally:
        shutil.rmtree(root)


def test_the_property_test_sees_real_errors(tmp_path: Path) -> None:
    """The in-process runner reports a checkpoint mistake as a TrtforgeError (so the property can fail)."""
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_CONFIG, {"w": [1]})
    result = CliRunner().invoke(app, ["inspect", str(ckpt)])
    assert isinstance(result.exception, TrtforgeError)
    assert os.fspath(ckpt) in str(result.exception)


@pytest.mark.parametrize("key", ["num_attention_heads", "num_key_value_heads", "num_hidden_layers"])
def test_build_preflight_refuses_zero_dimensions_in_one_line(tmp_path: Path, key: str) -> None:
    ckpt = write_nvfp4_checkpoint(tmp_path / "ckpt", tiny=True)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, key: 0, "head_dim": 64}))
    catalog = Path(os.environ["TRTFORGE_CATALOG"])
    catalog.write_text(f'[engines.small]\nmodel = "{ckpt}"\nmax_seq_len = 2048\nmax_num_tokens = 2048\n')
    standins = str(Path(__file__).parent / "standins")
    path = os.pathsep.join(filter(None, [standins, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TRTFORGE_GPU_ARCH": "sm100"}
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", "build", "small"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and key in last, result.stderr
