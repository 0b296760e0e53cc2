"""trtforge postprocessing model (Triton python backend): token ids -> the exact UTF-8 bytes they spell.

Self-contained on purpose (numpy, transformers, triton_python_backend_utils only): it is copied into model
repositories that also run in NVIDIA's tritonserver containers, where trtforge is not installed.

Parameters: `tokenizer_dir` (the engine directory), `skip_special_tokens` ("true"/"false").
Inputs: TOKENS_BATCH INT32 [b, beams, n], SEQUENCE_LENGTH INT32 [b, beams].
Output: OUTPUT BYTES [b, beams].

Why bytes, not `tokenizer.decode()` per response: when streaming, every response of `tensorrt_llm` carries only
the new token(s), and this model sees each response alone (Triton gives it no per-stream state). The stock
model decodes each chunk as if it were a whole text, which drops the leading space SentencePiece encodes in
"▁word" tokens and turns a character split across two tokens into two U+FFFD. Here each token maps to the
bytes it stands for (a table built once from the tokenizer), so each OUTPUT is a byte fragment and

    concatenating the OUTPUT bytes of all responses == the UTF-8 encoding of the whole generated text.

The limit: one fragment may end in the middle of a multi-byte character. A client must join the fragments
before decoding, or decode them with an incremental decoder (`codecs.getincrementaldecoder("utf-8")()`),
never `.decode()` each fragment alone. Other differences from `tokenizer.decode()`: no
`clean_up_tokenization_spaces`, and a SentencePiece text keeps the space before its first word. Tokenizers
that are neither byte-level BPE nor SentencePiece (e.g. WordPiece) fall back to decoding token by token.
(trtforge's OpenAI proxy does not use this model: it talks to `tensorrt_llm` with token ids and decodes
incrementally itself.)
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer, PreTrainedTokenizerBase

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE (GPT-2, Llama 3, Qwen) spells each byte as one printable character: char -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in alphabet.values():
            alphabet[chr(256 + shifted)] = b
            shifted += 1
    return alphabet


def decoder_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's decoding family from its decoder pipeline: byte_level, sentencepiece or generic."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        return "generic"
    try:
        spec = json.loads(backend.decoder.__getstate__())
    except Exception:
        spec = json.loads(backend.to_str()).get("decoder") or {}
    kinds: set[str | None] = set()
    pending = [spec]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            kinds.add(node.get("type"))
            pending.extend(node.get("decoders") or [])
    if "ByteLevel" in kinds:
        return "byte_level"
    if kinds & {"ByteFallback", "Metaspace", "Replace"}:
        return "sentencepiece"
    return "generic"


def token_byte_table(tokenizer: PreTrainedTokenizerBase, *, skip_special_tokens: bool = True) -> list[bytes]:
    """The bytes each token id stands for (b"" for skipped special tokens and unknown ids)."""
    kind = decoder_kind(tokenizer)
    alphabet = byte_level_alphabet() if kind == "byte_level" else {}
    special = set(tokenizer.all_special_ids)
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    size = len(tokenizer)
    # A list of ids gives a list of tokens (None for ids without one); a single id would give a str.
    pieces = cast("list[str | None]", tokenizer.convert_ids_to_tokens(list(range(size))))
    table: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        if piece is None or (token_id in special and skip_special_tokens):
            table.append(b"")
        elif token_id in added or token_id in special:
            table.append(piece.encode("utf-8"))  # added tokens are stored as plain text
        elif kind == "byte_level":
            table.append(bytes(alphabet[ch] for ch in piece) if all(ch in alphabet for ch in piece) else b"")
        elif kind == "sentencepiece":
            match = _BYTE_PIECE.match(piece)
            table.append(
                bytes([int(match.group(1), 16)]) if match else piece.replace("▁", " ").encode("utf-8")
            )
        else:
            text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            table.append(text.encode("utf-8") if isinstance(text, str) else b"")  # a list of ids gives a str
    return table


def tokens_to_bytes(table: list[bytes], tokens: npt.NDArray[Any]) -> bytes:
    size = len(table)
    return b"".join(table[t] if 0 <= t < size else b"" for t in np.asarray(tokens).reshape(-1).tolist())


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str, default: str = "") -> str:
            return str(parameters.get(key, {}).get("string_value", default))

        tokenizer = AutoTokenizer.from_pretrained(param("tokenizer_dir"))
        skip = param("skip_special_tokens", "true").strip().lower() not in ("false", "0", "no")
        self.table = token_byte_table(tokenizer, skip_special_tokens=skip)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[self._process(request)]))
            except Exception as exc:  # one bad request must not fail the batch
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
        return responses

    def _process(self, request: Any) -> Any:
        tokens: npt.NDArray[Any] = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths: npt.NDArray[Any] = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        if tokens.ndim == 2:  # [b, n] from a caller that leaves the beam dimension out
            tokens = tokens[:, None, :]
        lengths = lengths.reshape(tokens.shape[0], -1)
        out = np.empty(lengths.shape, dtype=object)
        for b in range(tokens.shape[0]):
            for beam in range(lengths.shape[1]):
                out[b, beam] = tokens_to_bytes(self.table, tokens[b, beam, : int(lengths[b, beam])])
        return pb_utils.Tensor("OUTPUT", out)
