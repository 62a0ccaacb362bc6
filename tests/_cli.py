"""The ``jaxmetrics`` command line, run in this process or in a fresh one.

:func:`run` calls ``jaxmetrics.pipeline.cli.main`` here, the function ``python -m jaxmetrics`` and
the console script call, with the environment, output streams and warning filters a fresh
interpreter would give it. A fresh process costs ~2 s of imports and recompiles every network
and kernel the test suite has already compiled (several seconds per command on 2 cores), so the
command-line tests run in-process; :func:`run_process` keeps a few on the real entry point, and
the tests of what only a fresh process shows (CPU device count from XLA_FLAGS, which this
process's conftest already fixed) use it.

What in-process runs do not show, the subprocess ones do: ``python -m jaxmetrics`` itself, and a
start-up without the test run's forced 8 CPU devices and strict dtype promotion (under which
every in-process command runs, so a silent dtype promotion would fail here first). ``stderr`` here
holds what Python code writes to ``sys.stderr`` (the CLI's errors and warnings); what a fresh
process would also print there is not in it: output of XLA and absl below Python, ``logging``
records (pytest's handler takes them), and warnings raised at import or when JAX first traces a
function this process has traced before. "Exactly one line" assertions on ``stderr`` are about
the CLI's own lines.
"""

import contextlib
import io
import os
import subprocess
import sys
import warnings
from typing import NamedTuple


class Result(NamedTuple):
  """What a run gave: like ``subprocess.CompletedProcess``'s fields."""
  returncode: int
  stdout: str
  stderr: str


def run(*args, cache=None, env=None):
  """``jaxmetrics ARGS`` in this process, with ``JAXMETRICS_CACHE=cache`` (unless None) and
  ``env`` set."""
  from jaxmetrics.pipeline import cli  # pylint: disable=import-outside-toplevel
  saved = dict(os.environ)
  os.environ.update({**({} if cache is None else {"JAXMETRICS_CACHE": str(cache)}), **(env or {})})
  stdout, stderr = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
        warnings.catch_warnings():
      # A fresh interpreter's filters (each warning once per place; these categories hidden),
      # not pytest's.
      warnings.resetwarnings()
      for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                       ResourceWarning):
        warnings.simplefilter("ignore", category)
      try:
        code = cli.main([str(a) for a in args])
      except SystemExit as e:  # argparse's usage errors
        code = e.code
  finally:
    os.environ.clear()
    os.environ.update(saved)
  return Result(code, stdout.getvalue(), stderr.getvalue())


def run_process(*args, cache, env=None):
  """``python -m jaxmetrics ARGS`` in a fresh process, without this run's XLA_FLAGS."""
  env = dict(os.environ, JAXMETRICS_CACHE=str(cache), **(env or {}))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "jaxmetrics", *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=600)
