"""Streaming detokenization in `tensorrt_llm_bls`: cost per token and correctness, side by side.

For one generated text of N tokens delivered one token per response (as `tensorrt_llm` streams), three ways to
turn the stream into text deltas:

- trtforge: the BLS model's `TextStream` (per-token bytes table + incremental UTF-8 decoder);
- stock: decode each chunk on its own (`tokenizer.decode([token])`), what the stock postprocessing does;
- re-decode: decode everything so far at each token and send the new suffix (correct, but quadratic).

Prints µs per token for each N and whether the joined deltas equal `tokenizer.decode(all ids)`.

    .venv/bin/python benchmarks/bls_detokenize.py --lengths 256,1024,4096
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trtforge.triton import find_tritonserver

MODELS = Path(__file__).parent.parent / "src" / "trtforge" / "triton" / "models"
TEXT = (
    "Grüße aus Köln! Das Wetter ist schön, naïve café owners say. 日本語のテキストも少し。 "
    "Emoji 🚀✨ and plain ASCII words, numbers 12345, and punctuation — all mixed together. "
)


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _tokenizer() -> Any:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,  # few merges: multi-byte characters span several tokens, as in real vocabularies
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT] * 8, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def _time(fn: Any, repeats: int = 3) -> tuple[float, str]:
    """The best of `repeats` runs (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    text = ""
    for _ in range(repeats):
        started = time.perf_counter()
        text = fn()
        best = min(best, time.perf_counter() - started)
    return best, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="256,1024,4096")
    args = parser.parse_args()

    sys.path.append(str(find_tritonserver().backend_dir / "python"))  # triton_python_backend_utils
    _load(MODELS / "postprocessing" / "model.py", "token_bytes")
    bls = _load(MODELS / "tensorrt_llm_bls" / "model.py", "trtforge_bls_model")
    tokenizer = _tokenizer()
    table = sys.modules["token_bytes"].token_byte_table(tokenizer)
    print(f"python {sys.version.split()[0]}; byte-level BPE, vocab {len(tokenizer)}; one token per response")
    print("| tokens | method | µs/token | joined == decode(all) |")
    print("|---|---|---|---|")
    for length in (int(n) for n in args.lengths.split(",")):
        ids: list[int] = []
        while len(ids) < length:
            ids += tokenizer.encode(TEXT)
        ids = ids[:length]
        expected = tokenizer.decode(ids)

        def ours(ids: list[int] = ids) -> str:
            stream = bls.TextStream(table)
            return "".join(stream.push([t]) for t in ids) + stream.finish()

        def stock(ids: list[int] = ids) -> str:
            return "".join(tokenizer.decode([t]) for t in ids)

        def redecode(ids: list[int] = ids) -> str:
            sent = ""
            out = []
            for i in range(1, len(ids) + 1):
                text = tokenizer.decode(ids[:i])
                if not text.endswith("\ufffd"):  # hold back an incomplete character
                    out.append(text[len(sent) :])
                    sent = text
            return "".join(out)

        methods = (("trtforge TextStream", ours), ("stock per-chunk decode", stock), ("re-decode", redecode))
        for name, fn in methods:
            seconds, text = _time(fn, repeats=1 if name == "re-decode" and length > 1024 else 3)
            broken = text.count("\ufffd")
            print(
                f"| {length} | {name} | {seconds / length * 1e6:.1f} | {text == expected} ({broken} U+FFFD) |"
            )


if __name__ == "__main__":
    main()
