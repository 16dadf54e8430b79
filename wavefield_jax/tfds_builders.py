"""TFDS builders (array_record, no TensorFlow) for the sources that arrive as files: local text files and the
WikiText-103 archive. `sources` builds them; each is prepared once into `data.tfds_dir`."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import tensorflow_datasets as tfds

from wavefield_jax.errors import DataError
from wavefield_jax.prepared import SPLITS


def files_stamp(files: dict[str, list[str]]) -> str:
  """Each file's path, size and modification time, by split: it changes when a file does."""
  stat = lambda path: (path, Path(path).stat().st_size, Path(path).stat().st_mtime_ns)  # noqa: E731
  return json.dumps({split: [stat(path) for path in paths] for split, paths in files.items()})


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
