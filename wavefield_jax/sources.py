"""Text sources: each gives the documents of the train, validation and test splits, from local files only.

Sources (config.data.source):
  shakespeare  the shipped corpus (data/shakespeare.txt.xz); validation and test are whole plays.
  local_text   any text files (config.data.files, globs); TFDS `local_text` builder, array_record.
  wikitext103  the official `wikitext-103-raw-v1.zip` placed in config.data.manual_dir.
  tfds         a prepared TFDS catalog dataset (lm1b, pg19, ...) by name, read with tfds.data_source.
"""

from __future__ import annotations

import glob
import hashlib
import json
import lzma
import re
import zipfile
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from wavefield_jax.config import SOURCES, shipped_file
from wavefield_jax.errors import DataError

CORPUS = shipped_file("data", "shakespeare.txt.xz")
MANIFEST = shipped_file("data", "shakespeare.json")
SPLITS = ("train", "validation", "test")
# Whole plays held out from training (about 4.5% and 4% of the corpus).
SHAKESPEARE_HELD_OUT = {"validation": ("julius_caesar", "twelfth_night"), "test": ("macbeth", "tempest")}


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
    config = tfds.core.BuilderConfig(name="files_" + hashlib.sha1(files_stamp(self._files).encode()).hexdigest()[:16])
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


def files_stamp(files: dict[str, list[str]]) -> str:
  """Each file's path, size and modification time, by split: it changes when a file does."""
  stat = lambda path: (path, Path(path).stat().st_size, Path(path).stat().st_mtime_ns)  # noqa: E731
  return json.dumps({split: [stat(path) for path in paths] for split, paths in files.items()})


def matched_files(data: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """The files of each split that config.data.files' globs match (local_text); none is a DataError."""
  files = {}
  for split, patterns in dict(data.files).items():
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files[split] = sorted({p for pattern in patterns for p in glob.glob(str(Path(pattern).expanduser()))})
    if not files[split]:
      raise DataError(f"data.files[{split!r}] matches no files: {patterns}")
  return files


def source_stamp(data: ml_collections.ConfigDict) -> str:
  """What identifies the documents config.data names: its source's settings, and the corpus's recorded sha256
  (shipped corpus), the files' sizes and times (local_text) or the archive's (wikitext103)."""
  settings = {key: data[key] for key in ("source", "tfds_name", "text_key", "tfds_validation_split", "tfds_test_split")}
  if data.source == "shakespeare":
    settings["sha256"] = json.loads(MANIFEST.read_text())["sha256"]
  elif data.source == "local_text":
    settings["files"] = files_stamp(matched_files(data))
  elif data.source == "wikitext103":
    archive = Path(data.manual_dir).expanduser() / WikiText103.ARCHIVE
    settings["archive"] = files_stamp({"all": [str(archive)]}) if archive.exists() else "missing"
  return json.dumps(settings, sort_keys=True)


def load_documents(data: ml_collections.ConfigDict) -> dict[str, list[bytes]]:
  """The documents of each split for config.data."""
  if data.source == "shakespeare":
    return shakespeare_documents()
  if data.source == "local_text":
    builder = LocalText(files=matched_files(data), data_dir=data.tfds_dir)
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
    raise DataError(f"data.source must be one of {SOURCES}; got {data.source!r}")
  builder.download_and_prepare()
  return {split: _read_source(builder.as_data_source(split=split)) for split in SPLITS}
