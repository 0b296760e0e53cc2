"""The built-in `tiny` engine: a smoke-trained Qwen3 model that the CPU reference backend serves.

`write_tiny_engine` trains a byte-level BPE tokenizer on the corpus shipped in `data/`, builds a 2-layer
Qwen3ForCausalLM from a fixed seed and trains it for a few hundred steps on chat-formatted samples, so that greedy
decoding answers in the Qwen3 chat format and ends its replies with `<|im_end|>`. It knows next to nothing: it is
a smoke model for testing servers, clients and streams, not for answers. It also learns two Qwen3 behaviours by
heart, so reasoning and tool-call parsing can be tested through real generation (see `BEHAVIOURS`): with
thinking on, `Think first, then say hi.` gets a `<think>` block and then a greeting; offered `WEATHER_TOOL`,
`What is the weather in Paris?` gets a `<tool_call>` of `get_weather` with `{"city": "Paris"}`.

Layout written (an engine directory in the sense of `trtforge.engine`, backend "reference"):

    <dest>/
        config.json              TensorRT-LLM engine config (version, pretrained_config, build_config)
        hf_model/                config.json, generation_config.json, model.safetensors (Qwen3ForCausalLM)
        tokenizer.json, tokenizer_config.json   byte-level BPE, eos <|im_end|>, pad <|endoftext|>
        chat_template.jinja      Qwen3-style chat template (tools, thinking on/off)

The output is byte-identical on repeated runs on the same machine: everything random is seeded, torch runs
deterministic single-threaded kernels while the model is made, and files are written with sorted keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from trtforge.constants import tokenizers_without_threads
from trtforge.engine import CHAT_TEMPLATE, REFERENCE_MODEL_DIR, write_reference_engine_config
from trtforge.errors import UsageError

# Bump when anything about how the engine is made changes (it feeds the store's content hash).
# 0.2: the build_config of a trtllm-bench engine (max_input_len 1024, plugin_config), logits as asked.
GENERATOR_VERSION = "trtforge-reference-0.2"
SEED = 1234

TINY_DEFAULTS: dict[str, int] = {"max_batch_size": 8, "max_seq_len": 1024, "max_num_tokens": 1024}

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
# Special (dropped by decode(skip_special_tokens=True)) as in Qwen3's tokenizer.
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)
# Single tokens that stay in decoded text, also as in Qwen3: the reasoning and tool-call parsers look for them.
MARKUP_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
TOKENIZER_VOCAB_SIZE = 2048

# The model shape; vocab_size comes from the tokenizer.
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class TrainingSettings:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 4e-3
    warmup_steps: int = 20
    max_sample_tokens: int = 96  # corpus samples; the behaviours are never cut
    dialogue_repeats: int = 6
    behaviour_weight: float = 0.5  # of the behaviours' loss against the corpus batch's


TRAINING = TrainingSettings()

_DATA = "data"
_CORPUS = "corpus.txt"
_TEMPLATE = "chat_template.jinja"
_SYSTEM_PROMPT = "You are a helpful assistant."

# --- behaviours -----------------------------------------------------------------------------------------------

THINK_PROMPT = "Think first, then say hi."
THINK_REASONING = "The user wants me to think first. Then I say hi."
THINK_ANSWER = "Hi! Hello there."
WEATHER_PROMPT = "What is the weather in Paris?"
# Key order as an OpenAI client sends it (and the proxy passes it to the template).
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
        },
    },
}
WEATHER_CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Paris"}}


@dataclass(frozen=True)
class Behaviour:
    """A reply tiny learns by heart for one exact prompt."""

    user: str
    reply: str
    thinking: bool
    tools: tuple[dict[str, Any], ...] = ()


BEHAVIOURS: tuple[Behaviour, ...] = (
    Behaviour(THINK_PROMPT, f"<think>\n{THINK_REASONING}\n</think>\n\n{THINK_ANSWER}", thinking=True),
    Behaviour(THINK_PROMPT, THINK_ANSWER, thinking=False),
    *(
        Behaviour(
            WEATHER_PROMPT,
            f"<tool_call>\n{json.dumps(WEATHER_CALL)}\n</tool_call>",
            thinking=thinking,
            tools=(WEATHER_TOOL,),
        )
        for thinking in (True, False)
    ),
)


def _data_bytes(name: str) -> bytes:
    return (resources.files("trtforge.reference") / _DATA / name).read_bytes()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def tiny_source_digest() -> str:
    """sha256 over everything that determines the engine written by `write_tiny_engine` (except build sizes)."""
    digest = hashlib.sha256()
    for part in (
        GENERATOR_VERSION.encode(),
        _data_bytes(_CORPUS),
        _data_bytes(_TEMPLATE),
        json.dumps(
            {
                "seed": SEED,
                "model": MODEL_SHAPE,
                "special_tokens": SPECIAL_TOKENS,
                "markup_tokens": MARKUP_TOKENS,
                "tokenizer_vocab_size": TOKENIZER_VOCAB_SIZE,
                "training": asdict(TRAINING),
                "system_prompt": _SYSTEM_PROMPT,
                "behaviours": [asdict(b) for b in BEHAVIOURS],
                # The libraries that train and save the engine shape its bytes too.
                "libraries": {name: _version(name) for name in ("torch", "transformers", "tokenizers")},
            },
            sort_keys=True,
        ).encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def write_tiny_engine(
    dest: Path,
    *,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    gather_generation_logits: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write the tiny reference engine into `dest`, an existing empty directory.

    Args:
        dest: the engine directory to fill.
        max_batch_size, max_seq_len, max_num_tokens: the build settings recorded in config.json.
        gather_generation_logits: the engine returns generation logits (top log probabilities).
        progress: called with a short line before each stage.

    Raises:
        UsageError: `dest` is not an existing empty directory.
    """
    dest = Path(dest)
    if not dest.is_dir() or any(dest.iterdir()):
        raise UsageError(f"{dest}: the tiny engine is written into an existing empty directory")
    say = progress or (lambda _line: None)
    with _deterministic_torch():
        say("training the tiny model's tokenizer")
        tokenizer = make_tokenizer(max_seq_len)
        tokenizer.save_pretrained(dest)
        _normalise_json_files(dest)
        say("training the tiny model")
        model = _train_model(tokenizer, max_seq_len)
        _save_quietly(model, dest / REFERENCE_MODEL_DIR)
        _normalise_json_files(dest / REFERENCE_MODEL_DIR)
    (dest / CHAT_TEMPLATE).write_bytes(_data_bytes(_TEMPLATE))
    _write_engine_config(
        dest,
        model.config,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        gather_generation_logits=gather_generation_logits,
    )
    say("tiny engine written")


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Seeded, deterministic, single-threaded torch (restored on exit); tokenizers without thread pools."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    try:
        with tokenizers_without_threads():
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng_state)


# --- corpus -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exchange:
    user: str
    reply: str


def corpus_text() -> str:
    """The text the tiny model and its tokenizer are trained on (tests and benchmarks draw prompts from it)."""
    return _data_bytes(_CORPUS).decode("utf-8")


def _corpus_exchanges(text: str, dialogue_repeats: int) -> list[_Exchange]:
    """Chat exchanges from the corpus: its `User:`/`Assistant:` dialogues, and each prose sentence → the next."""
    exchanges: list[_Exchange] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = paragraph.strip().splitlines()
        if lines[0].startswith("User: ") and len(lines) == 2 and lines[1].startswith("Assistant: "):
            exchange = _Exchange(lines[0].removeprefix("User: "), lines[1].removeprefix("Assistant: "))
            exchanges.extend([exchange] * dialogue_repeats)
            continue
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(line.strip() for line in lines))
        exchanges.extend(_Exchange(a, b) for a, b in itertools.pairwise(sentences))
    return exchanges


# --- tokenizer ----------------------------------------------------------------------------------------------------


def make_tokenizer(max_seq_len: int) -> Any:
    """A byte-level BPE (any UTF-8 round-trips) with Qwen's special tokens, wrapped for transformers."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        # All reserved up front so they get the first ids and never take part in merges.
        special_tokens=[*SPECIAL_TOKENS, *MARKUP_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    bpe.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKUP_TOKENS])
    # A round trip through JSON makes the tokenizer pick up the markup tokens' new non-special flag.
    bpe = Tokenizer.from_str(bpe.to_str())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[token for token in SPECIAL_TOKENS if token not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=max_seq_len,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _data_bytes(_TEMPLATE).decode("utf-8")
    return tokenizer


# --- model --------------------------------------------------------------------------------------------------------


def _training_batches(tokenizer: Any, settings: TrainingSettings) -> list[tuple[list[int], int]]:
    """Each corpus exchange rendered with the chat template: (token ids, index where the reply starts)."""
    samples: list[tuple[list[int], int]] = []
    for i, exchange in enumerate(_corpus_exchanges(corpus_text(), settings.dialogue_repeats)):
        messages = [{"role": "user", "content": exchange.user}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": _SYSTEM_PROMPT})
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, enable_thinking=i % 2 == 1, tokenize=False
        )
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        reply_ids = tokenizer.encode(exchange.reply + EOS_TOKEN + "\n", add_special_tokens=False)
        ids = (prompt_ids + reply_ids)[: settings.max_sample_tokens]
        samples.append((ids, len(prompt_ids)))
    return samples


def _behaviour_samples(tokenizer: Any) -> list[tuple[list[int], int]]:
    """Each behaviour rendered as the proxy renders its request: (token ids, index where the reply starts)."""
    samples: list[tuple[list[int], int]] = []
    for behaviour in BEHAVIOURS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": behaviour.user}],
            tools=list(behaviour.tools) or None,
            add_generation_prompt=True,
            enable_thinking=behaviour.thinking,
            tokenize=False,
        )
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        reply_ids = tokenizer.encode(behaviour.reply + EOS_TOKEN + "\n", add_special_tokens=False)
        samples.append((prompt_ids + reply_ids, len(prompt_ids)))
    return samples


def _save_quietly(model: Any, dest: Path) -> None:
    """`save_pretrained` without its shard progress bar (our own progress line says what is happening)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(dest)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _train_model(tokenizer: Any, max_seq_len: int) -> Any:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    settings = TRAINING
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_seq_len,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    model = Qwen3ForCausalLM(config)
    model.train()
    samples = _training_batches(tokenizer, settings)
    behaviours = _behaviour_samples(tokenizer)
    order = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / settings.warmup_steps) * max(0.1, 1 - step / settings.steps),
    )
    # Every step also sees each behaviour once, in a batch of its own: their prompts (the tool list) are 4×
    # longer than the corpus samples, and mixing them in would pad every corpus sample to their length.
    behaviour_batch = _pad_batch(behaviours, tokenizer.pad_token_id)
    for _ in range(settings.steps):
        picks = torch.randint(len(samples), (settings.batch_size,), generator=order).tolist()
        input_ids, labels, mask = _pad_batch([samples[p] for p in picks], tokenizer.pad_token_id)
        loss = _reply_loss(model, input_ids, labels, mask)
        loss = loss + settings.behaviour_weight * _reply_loss(model, *behaviour_batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def _reply_loss(model: Any, input_ids: Any, labels: Any, mask: Any) -> Any:
    """Next-token cross-entropy over the reply positions only.

    Projecting just those hidden states onto the vocabulary (not the prompt's) halves the cost of a step.
    """
    import torch

    hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def _pad_batch(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ids, labels masked outside the replies (-100), and the attention mask."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, reply_start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, reply_start : len(ids)] = torch.tensor(ids[reply_start:])
        mask[row, : len(ids)] = 1
    return input_ids, labels, mask


# --- files --------------------------------------------------------------------------------------------------------


def _normalise_json_files(directory: Path) -> None:
    """Rewrite the JSON files transformers saved with sorted keys, so the bytes do not depend on dict order.

    The tokenizer config also gets the class and key names that transformers 4.x understands too
    (5.x writes `TokenizersBackend` and `extra_special_tokens`, and still reads the older names).
    """
    for path in sorted(directory.glob("*.json")):
        if path.name == "tokenizer.json":
            continue  # written by the tokenizers library in a stable order already
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "tokenizer_config.json":
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
            data.pop("backend", None)
            if "extra_special_tokens" in data:
                data["additional_special_tokens"] = data.pop("extra_special_tokens")
        path.write_text(
            json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def _write_engine_config(
    dest: Path,
    hf_config: Any,
    *,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    gather_generation_logits: bool,
) -> None:
    write_reference_engine_config(
        dest,
        version=GENERATOR_VERSION,
        architecture="Qwen3ForCausalLM",
        shape={
            "vocab_size": hf_config.vocab_size,
            "hidden_size": hf_config.hidden_size,
            "num_hidden_layers": hf_config.num_hidden_layers,
            "num_attention_heads": hf_config.num_attention_heads,
            "num_key_value_heads": hf_config.num_key_value_heads,
            "head_size": hf_config.head_dim,
            "intermediate_size": hf_config.intermediate_size,
            "max_position_embeddings": hf_config.max_position_embeddings,
        },
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        gather_generation_logits=gather_generation_logits,
    )
