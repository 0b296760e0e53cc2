"""The xgrammar tokenizer info written at build: the layout the tensorrtllm backend reads, true to the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from triton_helpers import write_engine_dir, write_tokenizer
from trtforge.builder.xgrammar import write_tokenizer_info
from trtforge.engine import XGRAMMAR_TOKENIZER_INFO, read_engine
from trtforge.errors import CheckpointError
from trtforge.triton.repository import model_configs


def test_info_is_the_vocabulary_in_id_order_the_tokenizer_and_eos(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "engine")
    path = write_tokenizer_info(tmp_path / "engine")
    assert path == tmp_path / "engine" / XGRAMMAR_TOKENIZER_INFO
    info = json.loads(path.read_text())
    assert set(info) == {"encoded_vocab", "tokenizer_str", "stop_token_ids"}
    vocab = info["encoded_vocab"]
    assert len(vocab) == len(tokenizer.get_vocab())
    assert vocab == tokenizer.convert_ids_to_tokens(list(range(len(vocab))))
    assert info["stop_token_ids"] == [tokenizer.eos_token_id]
    # tokenizer_str is the whole fast tokenizer: it tokenizes exactly as the original does.
    text = "Hello wörld, 日本語 🚀"
    rebuilt = Tokenizer.from_str(info["tokenizer_str"])
    assert rebuilt.encode(text, add_special_tokens=False).ids == tokenizer.encode(
        text, add_special_tokens=False
    )


def test_a_served_entry_with_the_info_turns_guided_decoding_on(tmp_path: Path) -> None:
    path = write_engine_dir(tmp_path / "engine", backend="tensorrt")
    write_tokenizer_info(path)
    text = model_configs({"engine": read_engine(path)})["tensorrt_llm"]
    assert f'"{path.absolute() / XGRAMMAR_TOKENIZER_INFO}"' in text
    assert '"xgrammar"' in text


def test_without_a_tokenizer_it_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="cannot load the tokenizer for guided decoding") as raised:
        write_tokenizer_info(tmp_path / "empty")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "empty" / XGRAMMAR_TOKENIZER_INFO).exists()


def test_loaded_tokenizer_is_the_one_in_the_entry(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "engine")
    info = json.loads(write_tokenizer_info(tmp_path / "engine").read_text())
    again = AutoTokenizer.from_pretrained(str(tmp_path / "engine"))
    assert info["encoded_vocab"][again.eos_token_id] == again.eos_token
