"""`backend = "reference"` with any Hugging Face causal LM: a randomly initialised Llama written here (no hub),
built through the catalogue and the store, served by the real embedded Triton, queried with the `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import free_port
from proxy_fixtures import running_triton, serve_in_thread, train_byte_level_tokenizer, write_tokenizer_dir
from trtforge.builder.pipeline import ensure_engine
from trtforge.catalog import add_entry
from trtforge.engine import EngineInfo, read_engine
from trtforge.errors import CatalogError, CheckpointError
from trtforge.proxy import ProxySettings, make_server
from trtforge.reference.hf_engine import check_causal_lm

MODEL = "mini-llama"
MAX_SEQ_LEN = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random LlamaForCausalLM saved as safetensors, with a locally trained tokenizer and a template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = write_tokenizer_dir(tmp_path_factory.mktemp("mini-llama"))
    vocab = train_byte_level_tokenizer().get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    return dest


def test_only_causal_lms_with_safetensors_are_taken(checkpoint: Path, tmp_path: Path) -> None:
    assert check_causal_lm(checkpoint)["architectures"] == ["LlamaForCausalLM"]
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (encoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="ForCausalLM"):
        check_causal_lm(encoder)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="safetensors"):
        check_causal_lm(pickled)
    with pytest.raises(CatalogError, match="tp_size"):
        add_entry("bad", model=str(checkpoint), backend="reference", tp_size=2)


@pytest.fixture(scope="module")
def engine(checkpoint: Path, isolated_session_home: Path) -> EngineInfo:
    add_entry(
        MODEL,
        model=str(checkpoint),
        backend="reference",
        max_seq_len=MAX_SEQ_LEN,
        max_num_tokens=128,
        gather_generation_logits=True,  # the test asks for top_logprobs
    )
    result = ensure_engine(MODEL)
    again = ensure_engine(MODEL)
    assert again.cached and again.path == result.path
    return read_engine(result.path)


@pytest.fixture(scope="module")
def sdk(engine: EngineInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("triton-hf")
    with running_triton(engine, root) as server:
        settings = ProxySettings.from_engine(MODEL, engine, server.grpc_url)
        with serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.mark.triton
def test_a_local_llama_checkpoint_is_served(sdk: openai.OpenAI, engine: EngineInfo) -> None:
    assert engine.backend == "reference" and engine.architecture == "LlamaForCausalLM"
    assert [(m.id, m.model_extra and m.model_extra.get("max_model_len")) for m in sdk.models.list()] == [
        (MODEL, MAX_SEQ_LEN)
    ]
    messages = [{"role": "user", "content": "Hello world"}]
    kwargs: dict[str, object] = {"temperature": 0, "max_tokens": 6, "extra_body": {"ignore_eos": True}}
    whole = sdk.chat.completions.create(
        model=MODEL, messages=messages, logprobs=True, top_logprobs=2, **kwargs
    )  # type: ignore[call-overload]
    assert whole.usage is not None and whole.usage.completion_tokens == 6
    assert whole.choices[0].finish_reason == "length"
    content = whole.choices[0].logprobs.content if whole.choices[0].logprobs else None
    assert content is not None and len(content) == 6 and all(len(t.top_logprobs) == 2 for t in content)
    streamed = sdk.chat.completions.create(model=MODEL, messages=messages, stream=True, **kwargs)  # type: ignore[call-overload]
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == whole.choices[0].message.content
    )
