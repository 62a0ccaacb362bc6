"""Exceptions raised by jaxmetrics.

Every error message is one line that names the input, what was expected and what came, so that the
command line can print it as is and a training loop fails with a reason instead of a deep traceback.
"""


class JaxmetricsError(Exception):
  """Base class of the errors jaxmetrics raises on purpose."""


class InputError(JaxmetricsError, ValueError):
  """An argument (images, features, statistics, options) is not what the function accepts."""


class CheckpointError(JaxmetricsError, ValueError):
  """A weights file cannot be read: truncated, not a checkpoint, or it asks for a forbidden global."""


class WeightsError(JaxmetricsError, RuntimeError):
  """A weights file cannot be obtained or does not match its registry entry (size, sha256)."""
