"""trtforge preprocessing model (Triton python backend): prompt text -> token ids for `tensorrt_llm`.

Self-contained on purpose (numpy, transformers, triton_python_backend_utils only): it is copied into model
repositories that also run in NVIDIA's tritonserver containers, where trtforge is not installed.

Parameters: `tokenizer_dir` (the engine directory), `add_special_tokens` ("true"/"false"), `max_input_len`.

Inputs (batch dimension first):
    QUERY                  BYTES [b, 1]   the prompt, UTF-8
    REQUEST_OUTPUT_LEN     INT32 [b, 1]   passed through
    BAD_WORDS_DICT         BYTES [b, n]   optional; each element holds one or more comma-separated words
    STOP_WORDS_DICT        BYTES [b, n]   optional; same format (CSV quoting allowed: '"a, b",c')
    EMBEDDING_BIAS_WORDS   BYTES [b, n]   optional, with EMBEDDING_BIAS_WEIGHTS FP32 [b, n]
    END_ID, PAD_ID         INT32 [b, 1]   optional; default to the tokenizer's eos / pad token
Outputs:
    INPUT_ID INT32 [b, max_len] (padded with the pad id), REQUEST_INPUT_LEN INT32 [b, 1],
    BAD_WORDS_IDS / STOP_WORDS_IDS INT32 [b, 2, w] (row 0: the words' token ids end to end, padded with 0;
    row 1: each word's end offset, padded with -1), EMBEDDING_BIAS FP32 [b, vocab] ([b, 0] when unused),
    REQUEST_OUTPUT_LEN INT32 [b, 1], OUT_END_ID INT32 [b, 1], OUT_PAD_ID INT32 [b, 1].

Prompt text is never logged.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer, PreTrainedTokenizerBase

# Numpy arrays in and out of Triton tensors; pb_utils itself is untyped (Triton provides it at run time).
Array = npt.NDArray[Any]


def parse_bool(text: str, default: bool) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return default


def split_words(row: Array) -> list[str]:
    """The words of one batch item: every element may hold several comma-separated (CSV-quoted) words."""
    words: list[str] = []
    for element in np.asarray(row, dtype=object).reshape(-1):
        text = element.decode("utf-8") if isinstance(element, bytes) else str(element)
        for parsed in csv.reader([text]):
            words.extend(word for word in parsed if word)
    return words


def word_list(tokenizer: PreTrainedTokenizerBase, batch_words: Array | None, batch_size: int) -> Array:
    """Stop/bad words in the TensorRT-LLM word-list layout [b, 2, w]; [b, 2, 0] when there are none."""
    if batch_words is None:
        return np.empty((batch_size, 2, 0), dtype=np.int32)
    items = []
    for row in batch_words:
        ids: list[int] = []
        ends: list[int] = []
        for word in split_words(row):
            tokens = tokenizer.encode(word, add_special_tokens=False)
            if tokens:
                ids.extend(tokens)
                ends.append(len(ids))
        items.append((ids, ends))
    width = max((len(ids) for ids, _ in items), default=0)
    out = np.zeros((len(items), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, (ids, ends) in enumerate(items):
        out[i, 0, : len(ids)] = ids
        out[i, 1, : len(ends)] = ends
    return out


def embedding_bias(
    tokenizer: PreTrainedTokenizerBase, words: Array | None, weights: Array | None, batch_size: int
) -> Array:
    """A per-token bias vector per batch item: each word's tokens get its weight; [b, 0] when unused."""
    if words is None or weights is None:
        return np.empty((batch_size, 0), dtype=np.float32)
    bias = np.zeros((len(words), len(tokenizer)), dtype=np.float32)
    for i, (row_words, row_weights) in enumerate(zip(words, weights, strict=True)):
        flat_words = np.asarray(row_words, dtype=object).reshape(-1)
        for word, weight in zip(flat_words, np.asarray(row_weights).reshape(-1), strict=True):
            text = word.decode("utf-8") if isinstance(word, bytes) else str(word)
            for token in tokenizer.encode(text, add_special_tokens=False):
                bias[i, token] += float(weight)
    return bias


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str, default: str = "") -> str:
            return str(parameters.get(key, {}).get("string_value", default))

        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(param("tokenizer_dir"))
        self.add_special_tokens = parse_bool(param("add_special_tokens", "true"), True)
        max_input_len = param("max_input_len", "0")
        self.max_input_len = int(max_input_len) if max_input_len.isdigit() else 0
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._process(request)))
            except Exception as exc:  # one bad request must not fail the batch
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
        return responses

    def _input(self, request: Any, name: str) -> Array | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        array: Array = tensor.as_numpy()
        return array

    def _required(self, request: Any, name: str) -> Array:
        array = self._input(request, name)
        if array is None:
            raise ValueError(f"{name} is required")
        return array

    def _process(self, request: Any) -> list[Any]:
        queries = self._required(request, "QUERY")
        batch_size = queries.shape[0]
        end_ids = self._ids_or_default(self._input(request, "END_ID"), self.end_id, batch_size, "END_ID")
        pad_ids = self._ids_or_default(self._input(request, "PAD_ID"), self.pad_id, batch_size, "PAD_ID")

        token_lists = [self._encode(query) for query in queries.reshape(batch_size, -1)[:, 0]]
        max_len = max(len(tokens) for tokens in token_lists)
        input_ids = np.empty((batch_size, max_len), dtype=np.int32)
        for i, tokens in enumerate(token_lists):
            input_ids[i, :] = pad_ids[i, 0]
            input_ids[i, : len(tokens)] = tokens
        input_lengths = np.array([[len(tokens)] for tokens in token_lists], dtype=np.int32)

        outputs = {
            "INPUT_ID": input_ids,
            "REQUEST_INPUT_LEN": input_lengths,
            "BAD_WORDS_IDS": word_list(self.tokenizer, self._input(request, "BAD_WORDS_DICT"), batch_size),
            "STOP_WORDS_IDS": word_list(self.tokenizer, self._input(request, "STOP_WORDS_DICT"), batch_size),
            "EMBEDDING_BIAS": embedding_bias(
                self.tokenizer,
                self._input(request, "EMBEDDING_BIAS_WORDS"),
                self._input(request, "EMBEDDING_BIAS_WEIGHTS"),
                batch_size,
            ),
            "REQUEST_OUTPUT_LEN": self._required(request, "REQUEST_OUTPUT_LEN").astype(np.int32),
            "OUT_END_ID": end_ids,
            "OUT_PAD_ID": pad_ids,
        }
        return [pb_utils.Tensor(name, value) for name, value in outputs.items()]

    def _encode(self, query: object) -> list[int]:
        text = query.decode("utf-8") if isinstance(query, bytes) else str(query)
        tokens: list[int] = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
        if not tokens:
            raise ValueError("the prompt encodes to no tokens")
        if self.max_input_len and len(tokens) > self.max_input_len:
            raise ValueError(
                f"the prompt has {len(tokens)} tokens; the engine accepts at most {self.max_input_len}"
            )
        return tokens

    @staticmethod
    def _ids_or_default(given: Array | None, default: int | None, batch_size: int, name: str) -> Array:
        if given is not None:
            ids: Array = given.reshape(batch_size, 1).astype(np.int32)
            return ids
        if default is None:
            raise ValueError(f"{name} is required: the tokenizer defines no default")
        return np.full((batch_size, 1), default, dtype=np.int32)
