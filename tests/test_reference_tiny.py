"""The built-in tiny engine: deterministic files, a usable tokenizer and chat template, a model that ends replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trtforge.engine import BENCH_PLUGIN_CONFIG, read_engine
from trtforge.errors import UsageError
from trtforge.reference.tiny import (
    BEHAVIOURS,
    TINY_DEFAULTS,
    Behaviour,
    tiny_source_digest,
    write_tiny_engine,
)

QWEN_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_engine: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_engine)


@pytest.fixture(scope="module")
def model(tiny_engine: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_engine / "hf_model").eval()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_writes_are_byte_identical(tiny_engine: Path, tmp_path: Path) -> None:
    digest = tiny_source_digest()
    again = tmp_path / "again"
    again.mkdir()
    lines: list[str] = []
    write_tiny_engine(again, **TINY_DEFAULTS, progress=lines.append)
    assert _files(again) == _files(tiny_engine)
    assert tiny_source_digest() == digest and len(digest) == 64
    assert lines, "progress is reported"


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    with pytest.raises(UsageError, match="empty directory"):
        write_tiny_engine(tmp_path, **TINY_DEFAULTS)


def test_layout_reads_as_a_reference_engine(tiny_engine: Path) -> None:
    info = read_engine(tiny_engine)
    assert info.backend == "reference"
    assert info.architecture == "Qwen3ForCausalLM"
    assert (info.max_batch_size, info.max_seq_len, info.max_num_tokens) == (8, 1024, 1024)
    assert (info.tp_size, info.pp_size, info.max_beam_width) == (1, 1, 1)
    assert info.quant_algo is None
    names = set(_files(tiny_engine))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    assert {"hf_model/config.json", "hf_model/model.safetensors", "hf_model/generation_config.json"} <= names
    pretrained = json.loads((tiny_engine / "config.json").read_text())["pretrained_config"]
    hf = json.loads((tiny_engine / "hf_model" / "config.json").read_text())
    assert pretrained["vocab_size"] == hf["vocab_size"]
    assert pretrained["head_size"] == hf["head_dim"] == 16
    build = json.loads((tiny_engine / "config.json").read_text())["build_config"]
    # What trtllm-bench writes for these sizes: BuildConfig's max_input_len, its attention plugins.
    assert build == {
        "max_input_len": 1024,
        "max_seq_len": 1024,
        "max_batch_size": 8,
        "max_beam_width": 1,
        "max_num_tokens": 1024,
        "gather_context_logits": False,
        "gather_generation_logits": False,
        "plugin_config": BENCH_PLUGIN_CONFIG,
    }
    # Served with chunked context (trtforge's default), a prompt may fill the context but for one token.
    assert info.chunked_context(None) and info.prompt_limit() == 1023
    assert info.prompt_limit(enable_chunked_context=False) == 1023  # min(1023, max_num_tokens 1024)


def test_tokenizer_round_trips_any_utf8(tokenizer: Any) -> None:
    text = "Héllo wörld — naïve café 🎉🚀 日本語のテキスト 한국어 \u200b\t\n  trailing spaces  "
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert max(ids) < len(tokenizer)


def test_tokenizer_has_qwen_special_tokens(tokenizer: Any) -> None:
    for token in QWEN_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Like Qwen3: the chat markers are special (skipped on decode), the think/tool tags stay in the text.
    ids = tokenizer.encode(
        "<|im_start|>a<think>b</think><tool_call>c</tool_call><|im_end|>", add_special_tokens=False
    )
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<think>b</think><tool_call>c</tool_call>"


def _render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_chat_template_basic_turns_and_thinking(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _render(tokenizer, messages, add_generation_prompt=True) == head
    assert _render(tokenizer, messages, add_generation_prompt=True, enable_thinking=True) == head
    no_thinking = _render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False)
    assert no_thinking == head + "<think>\n\n</think>\n\n"
    assert _render(tokenizer, messages) == head.removesuffix("<|im_start|>assistant\n")


def test_chat_template_reasoning_and_content_parts(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "\nGreet back.\n"},
    ]
    assert _render(tokenizer, messages) == (
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello.<|im_end|>\n"
    )


def test_chat_template_tools_calls_and_responses(tokenizer: Any) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Lyon"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
    ]
    text = _render(tokenizer, messages, tools=[tool], add_generation_prompt=True, enable_thinking=False)
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in system
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in system
    assert rest == (
        "<|im_start|>user\nWeather in Paris and Lyon?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_tools_without_system_message(tokenizer: Any) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    text = _render(tokenizer, [{"role": "user", "content": "x"}], tools=[tool], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert text.endswith("<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "prompt", ["Hello", "What is a GPU?", "Hi", "Tell me about bread.", "How do I make soup?", "Write a poem"]
)
@pytest.mark.parametrize("thinking", [False, True])
def test_greedy_reply_ends_with_im_end_within_64_tokens(
    tokenizer: Any, model: Any, prompt: str, thinking: bool
) -> None:
    import torch

    text = _render(
        tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True, enable_thinking=thinking
    )
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in new
    reply = tokenizer.decode(new[: new.index(eos)])
    assert len(new[: new.index(eos)]) >= 3, "a reply of several tokens, not an immediate end"
    assert any(c.isalpha() for c in reply)


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: f"{b.user}-thinking={b.thinking}")
def test_tiny_learned_its_behaviours_by_heart(tokenizer: Any, model: Any, behaviour: Behaviour) -> None:
    import torch

    text = _render(
        tokenizer,
        [{"role": "user", "content": behaviour.user}],
        tools=list(behaviour.tools) or None,
        add_generation_prompt=True,
        enable_thinking=behaviour.thinking,
    )
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :]) == behaviour.reply + "<|im_end|>"
