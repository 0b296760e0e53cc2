from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtforge.catalog import add_entry, load_catalog
from trtforge.errors import CatalogError


def test_builtins_have_the_seed_settings() -> None:
    catalog = load_catalog()
    qwen = catalog.get("qwen3-32b-nvfp4")
    assert (qwen.model, qwen.quantization, qwen.tp_size) == ("nvidia/Qwen3-32B-NVFP4", "NVFP4", 1)
    assert (qwen.max_batch_size, qwen.max_seq_len, qwen.max_num_tokens) == (8, 16384, 8192)
    tiny = catalog.get("tiny")
    assert tiny.backend == "reference"
    assert (tiny.max_batch_size, tiny.max_seq_len, tiny.max_num_tokens) == (8, 1024, 1024)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(CatalogError, match=r"'nope'.*qwen3-32b-nvfp4, tiny"):
        load_catalog().get("nope")


def test_user_file_merges_over_builtins() -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text(
        '[engines.qwen3-32b-nvfp4]\nmax_seq_len = 4096\n\n[engines.mine]\nmodel = "org/Mine"\ntp_size = 2\n'
    )
    catalog = load_catalog()
    assert catalog.get("qwen3-32b-nvfp4").max_seq_len == 4096
    assert catalog.get("qwen3-32b-nvfp4").quantization == "NVFP4"
    assert catalog.get("mine").tp_size == 2
    assert catalog.sources["mine"] == path
    assert catalog.sources["tiny"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('model = "a/b"\ntp_size = 0', "tp_size"),
        ('model = "a/b"\nquantization = "FP4"', "quantization"),
        ('model = "a/b"\ntp_size = 4\npp_size = 4', "engines.bad"),
        ('model = "a/b"\ncolour = "red"', "colour"),
        ('model = "a/b"\nbackend = "onnx"', "backend"),
        ("tp_size = 1", "model"),
    ],
)
def test_validation_errors_name_file_entry_and_field(body: str, field: str) -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text(f"[engines.bad]\n{body}\n")
    with pytest.raises(CatalogError) as info:
        load_catalog()
    message = str(info.value)
    assert str(path) in message
    assert "[engines.bad]" in message
    assert field in message


def test_invalid_toml_names_the_file() -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text("[engines.x\n")
    with pytest.raises(CatalogError, match=str(path)):
        load_catalog()


def test_add_entry_keeps_comments_and_validates(tmp_path: Path) -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text('# my engines\n[engines.old] # keep me\nmodel = "org/Old"\n')
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    entry = add_entry("new", model=str(checkpoint), quantization="nvfp4", max_seq_len=2048, tp_size=None)
    assert entry.quantization == "NVFP4"
    text = path.read_text()
    assert "# my engines" in text and "# keep me" in text
    catalog = load_catalog()
    assert catalog.get("new").model == str(checkpoint.resolve())
    assert catalog.get("new").local_model_dir == checkpoint.resolve()
    assert catalog.get("new").max_seq_len == 2048
    assert catalog.get("old").model == "org/Old"
    with pytest.raises(CatalogError, match="already exists"):
        add_entry("new", model="org/Other")
    with pytest.raises(CatalogError, match="tp_size"):
        add_entry("broken", model="org/B", tp_size=0)
    assert "broken" not in load_catalog()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".engines")] == []


@pytest.mark.parametrize("text", ["[engines.x\n", "engines = 3\n"])
def test_add_to_a_broken_file_is_one_line_and_leaves_it_alone(text: str) -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text(text)
    with pytest.raises(CatalogError, match=str(path)):
        add_entry("mine", model="org/Mine")
    assert path.read_text() == text


@pytest.mark.parametrize("option", ["tp_size", "max_seq_len", "workspace"])
def test_builder_options_cannot_shadow_the_flags_trtforge_sets(option: str) -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text(f'[engines.mine]\nmodel = "org/Mine"\nbuilder_options = {{ {option} = 4 }}\n')
    with pytest.raises(CatalogError, match=rf"\[engines.mine\] builder_options: option '{option}' is set by"):
        load_catalog()


def test_serve_table_is_read_validated_and_not_a_build_input() -> None:
    path = Path(os.environ["TRTFORGE_CATALOG"])
    path.write_text(
        '[engines.mine]\nmodel = "org/Mine"\n\n[engines.mine.serve]\n'
        "kv_cache_free_gpu_mem_fraction = 0.85\nenable_kv_cache_reuse = true\nmax_queue_size = 32\n"
    )
    entry = load_catalog().get("mine")
    assert entry.serve.kv_cache_free_gpu_mem_fraction == 0.85
    assert entry.serve.enable_kv_cache_reuse is True
    assert entry.serve.max_queue_size == 32
    # Serving knobs never change the engine: the build inputs (and so the store hash) ignore them.
    plain = load_catalog().get("qwen3-32b-nvfp4")
    assert "serve" not in entry.build_fields() and "serve" not in plain.build_fields()

    path.write_text(
        '[engines.mine]\nmodel = "org/Mine"\n\n[engines.mine.serve]\nkv_cache_free_gpu_mem_fraction = 2\n'
    )
    with pytest.raises(CatalogError) as info:
        load_catalog()
    assert (
        "[engines.mine] serve.kv_cache_free_gpu_mem_fraction: Input should be less than or equal to 1"
        in str(info.value)
    )
