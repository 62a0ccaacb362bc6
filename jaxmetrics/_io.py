"""Small host-side file helpers shared by the modules that write files."""

import contextlib
import os
import pathlib
import tempfile

import numpy as np


def save_npz_atomic(path, **arrays):
  """Writes ``arrays`` to ``path`` as ``.npz`` through a temporary file in the same folder.

  The file appears under its final name only when completely written: a failure (full disk, an
  interrupt) leaves no partial file behind. Raises ``OSError`` when the folder is not writable.
  """
  path = pathlib.Path(path)
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part",
                                   delete=False) as f:
    tmp = f.name
    try:
      # A file object, not a name: np.savez would append ".npz" to the temporary name.
      np.savez(f, **arrays)
    except BaseException:
      f.close()
      os.remove(tmp)
      raise
  try:
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
