"""The errors the commands turn into one line and exit status 2. Kept apart from the modules that raise them
(which import TFDS, orbax or JAX), so that catching one loads nothing heavy."""


class DataError(ValueError):
  """A corpus, split, tokenizer or scoring request problem, with a message that says what to fix."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into this run; nothing on disk was changed."""


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, unusable workdir); the last good checkpoint is kept."""
