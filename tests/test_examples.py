"""The training examples, run in-process with few steps and samples so that they cannot rot.

``examples/train_digits.py`` trains a VAE on scikit-learn's digits and tracks FID, KID and
precision/recall of its samples inside a jitted, ``shard_map``-ped evaluation step; here it runs on
the suite's 8 forced CPU devices (4 images a device and batch) with the random-weight Inception at
75×75, its cheapest input.
"""

import importlib.util
import math
import pathlib

import jax
import numpy as np
from flax import traverse_util


def _load(name):
  path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_digits_example_tracks_metrics_in_the_jitted_loop(tmp_path, monkeypatch):
  # An empty cache: a developer's cached official weights would switch the run to 299x299.
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  example = _load("train_digits")
  # optax's Adam raises a float to an int32 power (bias correction), which the suite's strict
  # promotion rejects; jaxmetrics itself runs under strict promotion in its own tests.
  with jax.numpy_dtype_promotion("standard"):
    out = example.main(steps=40, batch_size=64, eval_every=40, num_samples=32, eval_batch_size=32,
                       weights_arg=None, verbose=False)
  assert out["image_size"] == example.RANDOM_WEIGHTS_SIZE
  # Two evaluations (before training and at step 40) and 40 steps: one compilation each.
  assert out["compiles"] == {"train_step": 1, "eval_step": 1}
  assert [step for step, _, _ in out["history"]] == [0, 40]
  for _, _, values in out["history"]:
    assert all(math.isfinite(v) for v in values.values()), values
    assert 0 <= values["precision"] <= 1 and 0 <= values["recall"] <= 1
  losses = out["losses"]
  assert losses[-5:].mean() < losses[:5].mean()
  # The untrained decoder draws flat grey images, far from every digit; 40 steps of Adam give
  # blurry digits. FID of the random-weight features falls by more than half in the run this was
  # written with (25.5 -> 8.6 at 64 samples); the test asks only that it falls.
  before, after = out["history"][0][2], out["history"][-1][2]
  assert after["fid"] < before["fid"]


def test_digits_example_weights_are_drop_in(inception_checkpoints, tmp_path, monkeypatch):
  """``--weights PATH`` loads a FID Inception checkpoint (here the suite's random one in the
  official format), and the example's random parameters have exactly its tree and dtypes."""
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  example = _load("train_digits")
  loaded, described = example.inception_params(str(inception_checkpoints["legacy"]))
  assert described.startswith("weights from")
  random, described = example.inception_params(None, seed=3)
  assert described == "random Inception weights (seed 3)"
  flat_loaded, flat_random = (traverse_util.flatten_dict(t) for t in (loaded, random))
  assert flat_loaded.keys() == flat_random.keys()
  for path, value in flat_random.items():
    assert value.shape == flat_loaded[path].shape and value.dtype == np.float32, path
