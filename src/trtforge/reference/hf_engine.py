"""A reference engine from any Hugging Face causal LM checkpoint (a local directory or a hub snapshot).

The CPU reference backend runs the checkpoint with transformers' `AutoModelForCausalLM`, so any architecture
transformers knows works: this is how people develop against a real small model (e.g. `Qwen/Qwen3-0.6B`) on a
laptop. Layout written (an engine directory in the sense of `trtforge.engine`, backend "reference"):

    <dest>/
        config.json              engine config: the checkpoint's architecture and shape, the entry's build limits
        hf_model/                the checkpoint's config, generation config and safetensors weights
        tokenizer files          tokenizer.json / tokenizer_config.json / ... and chat_template.jinja if present

Only files with known names are taken from the checkpoint (it is untrusted input); weights must be safetensors
(pickled `.bin` weights can run code when loaded). Files are hard-linked when the checkpoint is on the same file
system, copied otherwise.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtforge.engine import (
    CHAT_TEMPLATE,
    REFERENCE_MODEL_DIR,
    TOKENIZER_FILES,
    TOKENIZER_REQUIRED,
    write_reference_engine_config,
)
from trtforge.errors import CheckpointError, UsageError
from trtforge.untrusted import inside, read_json_object

# Bump when anything about how the engine is made changes (it feeds the store's content hash).
# 0.2: the build_config of a trtllm-bench engine (max_input_len 1024, plugin_config), logits as asked.
HF_GENERATOR_VERSION = "trtforge-reference-hf-0.2"

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "*.safetensors")
_TOKENIZER_FILES = (*TOKENIZER_FILES, CHAT_TEMPLATE)
# What a hub snapshot needs for a reference engine.
HUB_PATTERNS = [*MODEL_FILES, *_TOKENIZER_FILES]


def _matching(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Regular files directly in `root` whose names match `patterns`, resolved inside `root`."""
    found = []
    for child in sorted(root.iterdir()):
        if any(fnmatch.fnmatch(child.name, p) for p in patterns):
            real = inside(root, child.name)
            if real is not None:
                found.append(real)
    return found


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def check_causal_lm(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json, when it describes a causal LM with safetensors weights.

    Raises:
        CheckpointError: no config.json, not a `...ForCausalLM` architecture, or no safetensors weights.
    """
    root = Path(os.path.realpath(model_dir))
    config_path = inside(root, "config.json")
    if config_path is None:
        raise CheckpointError(f"{model_dir}: no config.json: not a Hugging Face checkpoint directory")
    config = read_json_object(config_path)
    architectures = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures):
        raise CheckpointError(
            f"{model_dir}: architectures {architectures} has no ...ForCausalLM: the reference backend serves "
            "causal language models only"
        )
    if not _matching(root, ("*.safetensors",)):
        raise CheckpointError(f"{model_dir}: no *.safetensors weights (pickled .bin weights are not loaded)")
    return config


def write_checkpoint_engine(
    dest: Path,
    model_dir: Path,
    *,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    gather_generation_logits: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write a reference engine serving the checkpoint at `model_dir` into `dest` (an existing empty directory).

    `gather_generation_logits`: the engine returns generation logits (top log probabilities), as the entry asks.

    Raises:
        UsageError: `dest` is not an existing empty directory.
        CheckpointError: the checkpoint is not a causal LM with safetensors weights and a tokenizer.
    """
    dest = Path(dest)
    if not dest.is_dir() or any(dest.iterdir()):
        raise UsageError(f"{dest}: the reference engine is written into an existing empty directory")
    say = progress or (lambda _line: None)
    root = Path(os.path.realpath(model_dir))
    config = check_causal_lm(root)
    tokenizer_files = _matching(root, _TOKENIZER_FILES)
    if not any(p.name in TOKENIZER_REQUIRED for p in tokenizer_files):
        raise CheckpointError(f"{model_dir}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    say(f"linking the checkpoint {root.name}")
    (dest / REFERENCE_MODEL_DIR).mkdir()
    for source in _matching(root, MODEL_FILES):
        _link_or_copy(source, dest / REFERENCE_MODEL_DIR / source.name)
    for source in tokenizer_files:
        _link_or_copy(source, dest / source.name)
    positions = int(config.get("max_position_embeddings") or max_seq_len)
    if max_seq_len > positions:
        raise CheckpointError(
            f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings {positions}"
        )
    _write_engine_config(
        dest,
        config,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        gather_generation_logits=gather_generation_logits,
    )
    say("reference engine written")


def _write_engine_config(
    dest: Path,
    hf_config: dict[str, Any],
    *,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    gather_generation_logits: bool,
) -> None:
    text = hf_config.get("text_config") if isinstance(hf_config.get("text_config"), dict) else hf_config
    assert isinstance(text, dict)
    write_reference_engine_config(
        dest,
        version=HF_GENERATOR_VERSION,
        architecture=hf_config["architectures"][0],
        shape={
            key: text.get(key)
            for key in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
            )
        },
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        gather_generation_logits=gather_generation_logits,
    )
