"""The xgrammar tokenizer info written into a store entry at build time, for guided decoding.

TensorRT-LLM's `tensorrtllm` backend builds its grammar matcher from a JSON file named by the
`xgrammar_tokenizer_info_path` parameter rather than from the tokenizer itself:

    {"encoded_vocab":  [token string of id 0, id 1, ...],   # the tokenizer's vocabulary in id order
     "tokenizer_str":  "<the fast tokenizer's tokenizer.json>",  # xgrammar detects the vocab type from it
     "stop_token_ids": [eos_token_id]}

Writing it at build time means the served repository can switch guided decoding on (`guided_decoding_backend
xgrammar`) with nothing left to generate on the serving machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trtforge.atomic import write_text_atomic
from trtforge.engine import XGRAMMAR_TOKENIZER_INFO
from trtforge.errors import CheckpointError

__all__ = ["tokenizer_info", "write_tokenizer_info"]


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer info of a loaded `transformers` fast tokenizer.

    Raises:
        CheckpointError: the tokenizer is not a fast (`tokenizer.json`) one, or has no EOS token.
    """
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise CheckpointError(
            f"guided decoding needs a fast tokenizer (tokenizer.json); got {type(tokenizer).__name__}"
        )
    if tokenizer.eos_token_id is None:
        raise CheckpointError("guided decoding needs the tokenizer's EOS token; the tokenizer has none")
    vocab: dict[str, int] = tokenizer.get_vocab()
    return {
        "encoded_vocab": [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])],
        "tokenizer_str": tokenizer.backend_tokenizer.to_str(),
        "stop_token_ids": [int(tokenizer.eos_token_id)],
    }


def write_tokenizer_info(engine_dir: Path) -> Path:
    """Write `xgrammar_tokenizer_info.json` beside the engine from the tokenizer files already copied there.

    Raises:
        CheckpointError: the tokenizer cannot be loaded or is not supported (see `tokenizer_info`).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(engine_dir), trust_remote_code=False, use_fast=True)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{engine_dir}: cannot load the tokenizer for guided decoding: {reason}"
        ) from None
    path = engine_dir / XGRAMMAR_TOKENIZER_INFO
    write_text_atomic(path, json.dumps(tokenizer_info(tokenizer)))
    return path
