"""Test configuration shared by the whole suite.

* Several CPU devices are forced before JAX starts, so that sharding bugs show up on a laptop.
* Dtype promotion is strict, so that an accidental float64/int promotion fails loudly.
* When ``CI`` is set, a skipped test is reported as a failure: the parity tests against the torch
  peers must run in CI, never silently skip.
"""

import os

# Appended to the caller's XLA_FLAGS (e.g. ``--xla_cpu_max_isa=AVX2``, which CI uses to emit the
# code of an AVX2-only CPU), unless they already force a device count.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, which must run every test: {reason}"


@pytest.fixture(scope="session")
def inception_checkpoints(tmp_path_factory):
  """A random-weight FID Inception state dict saved in the legacy (official) and zip formats."""
  from tests import _inception_fixtures as fixtures
  folder = tmp_path_factory.mktemp("inception")
  state_dict = fixtures.random_state_dict(seed=0)
  legacy, zipped = fixtures.save_checkpoints(state_dict, folder)
  return {"legacy": legacy, "zip": zipped, "state_dict": state_dict}
