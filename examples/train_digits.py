"""Train a small VAE on scikit-learn's digits and track FID, KID and precision/recall in the loop.

The data set is the 1797 grey 8×8 digits that scikit-learn ships (``sklearn.datasets.load_digits``,
values 0..16, scaled to [0, 1]; nothing is downloaded). An MLP VAE with a Bernoulli decoder is
trained with Adam (optax). Every ``eval_every`` steps a jitted evaluation step draws latents,
decodes them, turns the samples into RGB, runs the FID Inception-v3 on them and on a fixed subset
of the digits, and folds both into :mod:`jaxmetrics.training` states: ``FID`` (two-sided feature
statistics), ``KID`` and ``PrecisionRecall`` (bounded buffers of pool3 rows). The step is a
``jax.shard_map`` over every device: each device updates its states from its share of the batch
and ``state.reduce("data")`` folds them by collectives, so the states leave the step replicated.
``compute()`` runs on the host after the last batch of each evaluation (KID draws subsets and the
k-NN metrics count on the host; FID takes its distance in float64 there).

Feature network. By default the Inception has random weights drawn from ``numpy.random.
default_rng(seed)`` (:func:`random_inception_params`: He-normal kernels, identity BatchNorm), so
the example needs no download; its numbers say whether samples get closer to the data, but they are
not comparable with published FIDs. ``--weights PATH`` loads a FID Inception checkpoint
(``pt_inception-2015-12-05-6726825d.pth``), ``--weights official`` downloads it (verified by
sha256), and the official file is used by default when it is already in the jaxmetrics cache.

Input size. The samples are resized with TF1 bilinear (the FID graph's resize) and normalised as
:func:`jaxmetrics.networks.inception.normalise` does. Published FIDs resize to 299×299, the
default with real weights. With random weights the default is 75×75, the smallest input the
network's stride-2 stem and two grid reductions accept (its pool3 is then a 1×1 map); at 299 the
network costs 16 times as much. ``--image-size`` overrides either.

Compilation. Every function has one input shape, so each compiles once for the whole run; the
script prints ``_cache_size()`` of the training and evaluation steps.

Run::

  python examples/train_digits.py                      # 1000 steps, 5 evaluations of 256 samples
  python examples/train_digits.py --steps 200 --eval-every 100 --num-samples 128

Needs optax and scikit-learn besides jaxmetrics (``pip install -e ".[examples]"``).
"""

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

from jaxmetrics import InputError
from jaxmetrics import training
from jaxmetrics.checkpoints import weights
from jaxmetrics.metrics.reconstruction import reconstruction_error
from jaxmetrics.networks import inception
from jaxmetrics.networks import resize as _resize

RANDOM_WEIGHTS_SIZE = 75  # the smallest square input of the Inception (1×1 map before pool3)


class VAE(nn.Module):
  """MLP encoder (Gaussian posterior) and decoder (Bernoulli logits) on 8×8 images."""
  hidden: int = 256
  latent: int = 8

  def setup(self):
    self.enc_hidden = nn.Dense(self.hidden)
    self.enc_mean = nn.Dense(self.latent)
    self.enc_logvar = nn.Dense(self.latent)
    self.dec_hidden = nn.Dense(self.hidden)
    self.dec_logits = nn.Dense(64)

  def __call__(self, x, key):
    h = nn.relu(self.enc_hidden(x.reshape(x.shape[0], -1)))
    mean, logvar = self.enc_mean(h), self.enc_logvar(h)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return self.decode(z), mean, logvar

  def decode(self, z):
    return self.dec_logits(nn.relu(self.dec_hidden(z))).reshape(z.shape[0], 8, 8, 1)

  def sample(self, z):
    """Decoder means of latents ``z``: grey (B, 8, 8, 1) images in [0, 1]."""
    return jax.nn.sigmoid(self.decode(z))


def load_data():
  """The 1797 digits as (N, 8, 8, 1) float32 in [0, 1] (scikit-learn stores 0..16)."""
  return (load_digits().images.astype(np.float32) / 16.0)[..., None]


def random_inception_params(seed=0):
  """Random FID-Inception parameters from ``numpy.random.default_rng(seed)``, without compiling.

  Kernels are He-normal (std √(2 / fan_in)), so that ReLU activations neither vanish nor
  explode through the 94 convolutions; BatchNorm is the identity (scale 1, bias 0, mean 0,
  variance 1); the fc layer (unused here: only pool3 is read) is N(0, 1/2048). Drawn in NumPy from
  the shapes of ``inception.param_shapes()``: a jitted ``Inception().init`` compiles for minutes on
  a small CPU.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(inception.param_shapes()).items():
    if path[-1] == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      std = np.sqrt(2.0 / fan_in) if len(leaf.shape) == 4 else np.sqrt(1.0 / fan_in)
      value = rng.normal(0.0, std, leaf.shape)
    elif path[-1] in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:  # BatchNorm bias and mean, fc bias
      value = np.zeros(leaf.shape)
    flat[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat)


def inception_params(weights_arg=None, seed=0):
  """``(params, description)``: a checkpoint path, ``"official"`` (download), the cached official
  file if present, else :func:`random_inception_params`."""
  if weights_arg == "official" or (weights_arg is None
                                   and weights.cached_path(inception.WEIGHTS).is_file()):
    return inception.load_params(), "official FID Inception weights"
  if weights_arg is not None:
    return inception.load_params(weights_arg, check_hash=False), f"weights from {weights_arg}"
  return random_inception_params(seed), f"random Inception weights (seed {seed})"


def pool3(params, images, size):
  """pool3 features of grey [0, 1] images: RGB, TF1 bilinear to ``size``, (x − 128) / 128."""
  rgb = jnp.repeat(images, 3, axis=-1) * 255.0
  pixels = _resize.resize(rgb, (size, size), mode="tf1")
  x = inception.normalise(pixels, "tf1")
  return inception.Inception().apply({"params": params}, x)["pool3"]


def negative_elbo(params, model, x, key, beta):
  """Per-image negative ELBO in nats: summed Bernoulli NLL of the pixels + KL(q(z|x) ‖ N(0, I))."""
  logits, mean, logvar = model.apply({"params": params}, x, key)
  nll = reconstruction_error(x, logits, kind="bce_logits", reduction="sum") / x.shape[0]
  kl = -0.5 * jnp.mean(jnp.sum(1 + logvar - mean * mean - jnp.exp(logvar), axis=-1))
  return nll + beta * kl


def metric_classes(num_samples):
  """The training-loop state classes: FID, KID and precision/recall, two-sided on pool3.

  KID's subsets hold half the samples (torch-fidelity's 1000 needs 1000 rows a side), 100 of them.
  """
  dim = inception.POOL3_DIM
  return {
      "fid": training.FID.configure(dim=dim),
      "kid": training.KID.configure(capacity=num_samples, dim=dim,
                                    subset_size=max(2, num_samples // 2)),
      "pr": training.PrecisionRecall.configure(capacity=num_samples, dim=dim),
  }


def main(steps=1000, batch_size=64, eval_every=250, num_samples=256, eval_batch_size=64,
         image_size=None, weights_arg=None, learning_rate=2e-3, beta=1.0, seed=0, verbose=True):
  """Trains, evaluates every ``eval_every`` steps and at the end; returns the numbers (the tests
  use them)."""
  say = print if verbose else (lambda *args, **kwargs: None)
  data = load_data()
  devices = jax.device_count()
  if eval_batch_size % devices or num_samples % eval_batch_size:
    raise InputError(f"num_samples, eval_batch_size: expected num_samples a multiple of "
                     f"eval_batch_size and that a multiple of the {devices} device(s), got "
                     f"{num_samples} and {eval_batch_size}")
  net_params, described = inception_params(weights_arg, seed)
  if image_size is None:
    image_size = RANDOM_WEIGHTS_SIZE if described.startswith("random") else inception.INPUT_SIZE
  if image_size < RANDOM_WEIGHTS_SIZE:
    raise InputError(f"image_size: expected at least {RANDOM_WEIGHTS_SIZE} (the Inception's "
                     f"smallest input), got {image_size}")
  say(f"{described}, {image_size}x{image_size} input, {devices} device(s)")

  rng = np.random.default_rng(seed)
  reference = data[rng.choice(len(data), num_samples, replace=False)]  # the fixed real side
  model = VAE()
  key = jax.random.key(seed)
  key, init_key, noise_key = jax.random.split(key, 3)
  # Jitted: an eager init dispatches (and compiles) every small op on its own.
  params = jax.jit(model.init)(init_key, jnp.asarray(data[:batch_size]), noise_key)["params"]
  optimizer = optax.adam(learning_rate)
  opt_state = jax.jit(optimizer.init)(params)
  Metrics = metric_classes(num_samples)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  net_params = jax.device_put(net_params)  # placed once, not at every call

  @jax.jit
  def train_step(params, opt_state, x, key):
    loss, grads = jax.value_and_grad(negative_elbo)(params, model, x, key, beta)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # One evaluation batch: each device decodes its latents, extracts pool3 of its samples and of its
  # real digits, and updates its states; reduce("data") folds the devices' states (psums).
  def per_device(params, net_params, z, real, mask):
    samples = model.apply({"params": params}, z, method=VAE.sample)
    # One pass of the network over both halves: one copy of it in the program to compile.
    features = pool3(net_params, jnp.concatenate([samples, real]), image_size)
    outputs = dict(features=features[:len(z)], reference_features=features[len(z):], mask=mask)
    return {name: cls.from_model_output(**outputs).reduce("data") for name, cls in Metrics.items()}

  # The states enter and leave every call replicated over the mesh: one input sharding, one
  # compilation (states fresh from empty() would otherwise differ from those the step returns).
  replicated = NamedSharding(mesh, P())

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_step(states, params, net_params, key, real, mask):
    z = jax.random.normal(key, (eval_batch_size, model.latent))
    batch = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P("data"), P("data"),
                                                           P("data")), out_specs=P())
    update = batch(params, net_params, z, real, mask)
    return {name: states[name].merge(update[name]) for name in states}

  def evaluate(params, key):
    states = jax.device_put({name: cls.empty() for name, cls in Metrics.items()}, replicated)
    for start in range(0, num_samples, eval_batch_size):
      key, batch_key = jax.random.split(key)
      real = reference[start:start + eval_batch_size]
      mask = np.ones(eval_batch_size, bool)  # every row counts: num_samples is a multiple
      states = eval_step(states, params, net_params, batch_key, real, mask)
    # compute() on the host: float64 FID, KID's subsets and the k-NN counts.
    fid = states["fid"].compute()
    kid_mean, kid_std = states["kid"].compute()
    pr = states["pr"].compute()
    return {"fid": float(fid), "kid": float(kid_mean), "kid_std": float(kid_std),
            "precision": float(pr["precision"]), "recall": float(pr["recall"])}

  history = []
  eval_key = jax.random.key(seed + 1)  # the same latents at every evaluation
  start = time.perf_counter()
  history.append((0, None, evaluate(params, eval_key)))
  say(f"step {0:5d}  {'':13s}  {_format(history[-1][2])}")
  losses = []
  for step in range(1, steps + 1):
    batch = data[rng.choice(len(data), batch_size, replace=False)]
    key, step_key = jax.random.split(key)
    params, opt_state, loss = train_step(params, opt_state, batch, step_key)
    losses.append(loss)
    if step % eval_every == 0 or step == steps:
      loss = float(loss)
      history.append((step, loss, evaluate(params, eval_key)))
      say(f"step {step:5d}  -elbo {loss:6.2f}  {_format(history[-1][2])}")
  elapsed = time.perf_counter() - start
  compiles = {"train_step": train_step._cache_size(), "eval_step": eval_step._cache_size()}
  say(f"{steps} steps and {len(history)} evaluations in {elapsed:.1f} s")
  say(f"compilations: {compiles}")
  return {"losses": np.asarray(jax.device_get(losses)), "history": history,
          "compiles": compiles, "seconds": elapsed, "image_size": image_size}


def _format(values):
  return (f"fid {values['fid']:9.4f}  kid {values['kid']:.5f} ± {values['kid_std']:.5f}  "
          f"precision {values['precision']:.3f}  recall {values['recall']:.3f}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--eval-every", type=int, default=250)
  parser.add_argument("--num-samples", type=int, default=256,
                      help="generated and real images per evaluation")
  parser.add_argument("--eval-batch-size", type=int, default=64)
  parser.add_argument("--image-size", type=int, default=None,
                      help="Inception input side (default 299 with real weights, 75 with random)")
  parser.add_argument("--weights", default=None,
                      help="a FID Inception checkpoint, or 'official' to download it")
  parser.add_argument("--learning-rate", type=float, default=2e-3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  main(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
       num_samples=args.num_samples, eval_batch_size=args.eval_batch_size,
       image_size=args.image_size, weights_arg=args.weights, learning_rate=args.learning_rate,
       seed=args.seed)
