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
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from wavefield_jax.config import SOURCES, shipped_file
from wavefield_jax.errors import DataError
from wavefield_jax.tfds_builders import SPLITS, LocalText, WikiText103, files_stamp

CORPUS = shipped_file("data", "shakespeare.txt.xz")
MANIFEST = shipped_file("data", "shakespeare.json")
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


def _read_source(source) -> list[bytes]:
  return [np.asarray(source[i]["text"]).item() for i in range(len(source))]


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
