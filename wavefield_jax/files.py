"""Files written whole or not at all, and their checksums: what checkpoints and prepared corpora share."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def file_sha256(path: Path) -> str:
  """The sha256 of a file's bytes, read in blocks."""
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
  """Writes `path` whole or not at all: a reader (another process, a restart after a crash) never sees half."""
  partial = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False)
  try:
    with partial:  # a full disk fails here, in write or close
      partial.write(text)
    os.replace(partial.name, path)
  except BaseException:
    Path(partial.name).unlink(missing_ok=True)  # the old file stays as it was, and no partial is left
    raise
