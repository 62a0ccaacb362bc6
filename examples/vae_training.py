"""Train a small VAE and log reconstruction metrics from streaming states inside the jitted step.

The data set is the 200 grey 25×25 crops (100 faces, 100 backgrounds) of the Labeled Faces in the
Wild subset that scikit-image ships (``skimage.data.lfw_subset()``, values in [0, 1]; nothing is
downloaded). 160 crops and their mirror images train an MLP VAE with Adam (optax); 40 are held out.

Every ``log_every`` steps the train step's metric states (BCE of the logits, MSE and PSNR of the
sigmoid outputs) are computed on the host, printed and reset. The states have fixed shapes, so the
jitted step compiles once for the whole run; the evaluation pads its last batch and passes a mask,
so it compiles once too. Both counts are printed (``_cache_size()`` of the jitted functions).

Run::

  python examples/vae_training.py             # 600 steps, about 10 s on a laptop CPU
  python examples/vae_training.py --steps 50

Needs optax and scikit-image besides jaxmetrics.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from skimage import data

from jaxmetrics.metrics.reconstruction import ReconstructionState
from jaxmetrics.metrics.reconstruction import reconstruction_error

# name: (kind, options) of a ReconstructionState. The BCE state is fed logits, the others sigmoids.
TRAIN_METRICS = {"bce": ("bce_logits", {}), "mse": ("mse", {}),
                 "psnr": ("psnr", {"data_range": 1.0})}
# On 25×25 crops the default 7×7 window leaves 19×19 centres per image.
EVAL_METRICS = {**TRAIN_METRICS, "ssim": ("ssim", {"data_range": 1.0})}


class Encoder(nn.Module):
  hidden: int
  latent: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.latent)(h), nn.Dense(self.latent)(h)


class Decoder(nn.Module):
  hidden: int
  shape: tuple

  @nn.compact
  def __call__(self, z):
    h = nn.relu(nn.Dense(self.hidden)(z))
    return nn.Dense(int(np.prod(self.shape)))(h).reshape((z.shape[0],) + self.shape)


class VAE(nn.Module):
  """Gaussian encoder, Bernoulli decoder: returns the decoder's logits and the posterior."""
  shape: tuple = (25, 25, 1)
  hidden: int = 256
  latent: int = 16

  def setup(self):
    self.encoder = Encoder(self.hidden, self.latent)
    self.decoder = Decoder(self.hidden, self.shape)

  def __call__(self, x, key):
    mean, logvar = self.encoder(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return self.decoder(z), mean, logvar

  def reconstruct(self, x):
    """Decodes the posterior mean: the deterministic reconstruction used for evaluation."""
    mean, _ = self.encoder(x)
    return self.decoder(mean)


def load_data(seed=0):
  images = data.lfw_subset().astype(np.float32)[..., None]  # (200, 25, 25, 1) in [0, 1]
  order = np.random.default_rng(seed).permutation(len(images))
  train, test = images[order[:160]], images[order[160:]]
  return np.concatenate([train, train[:, :, ::-1]]), test


def empty_states(metrics):
  return {name: ReconstructionState.empty(kind, **options)
          for name, (kind, options) in metrics.items()}


def update_states(states, metrics, x, logits, mask=None):
  probs = jax.nn.sigmoid(logits)
  return {name: states[name].update(x, logits if kind == "bce_logits" else probs, mask)
          for name, (kind, _) in metrics.items()}


def compute_states(states):
  return {name: float(state.compute()) for name, state in states.items()}


def negative_elbo(params, model, x, key, beta):
  """Per-image negative ELBO in nats: summed Bernoulli NLL of the pixels + KL(q(z|x) ‖ N(0, I))."""
  logits, mean, logvar = model.apply({"params": params}, x, key)
  nll = reconstruction_error(x, logits, kind="bce_logits", reduction="sum") / x.shape[0]
  kl = -0.5 * jnp.mean(jnp.sum(1 + logvar - mean * mean - jnp.exp(logvar), axis=-1))
  return nll + beta * kl, logits


def main(steps=600, batch_size=32, log_every=100, learning_rate=2e-3, beta=1.0, seed=0,
         verbose=True):
  """Trains, evaluates before and after, and returns the numbers (used by the tests)."""
  say = print if verbose else (lambda *args, **kwargs: None)
  train, test = load_data(seed)
  model = VAE(shape=train.shape[1:])
  key = jax.random.key(seed)
  key, init_key, sample_key = jax.random.split(key, 3)
  # Jitted: an eager init dispatches (and compiles) every small op on its own, seconds on CPU.
  params = jax.jit(model.init)(init_key, jnp.asarray(train[:batch_size]), sample_key)["params"]
  optimizer = optax.adam(learning_rate)
  opt_state = jax.jit(optimizer.init)(params)

  @jax.jit
  def train_step(params, opt_state, states, x, key):
    (loss, logits), grads = jax.value_and_grad(negative_elbo, has_aux=True)(
        params, model, x, key, beta)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, update_states(states, TRAIN_METRICS, x, logits), loss

  @jax.jit
  def eval_step(params, states, x, mask):
    logits = model.apply({"params": params}, x, method=VAE.reconstruct)
    return update_states(states, EVAL_METRICS, x, logits, mask)

  def evaluate(params):
    # Fixed batch shape: the last batch is padded with zeros and masked out.
    states = empty_states(EVAL_METRICS)
    for start in range(0, len(test), batch_size):
      x = test[start:start + batch_size]
      mask = np.arange(batch_size) < len(x)
      x = np.concatenate([x, np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)])
      states = eval_step(params, states, x, mask)
    return compute_states(states)

  before = evaluate(params)
  say(f"held-out before training: {_format(before)}")
  states = empty_states(TRAIN_METRICS)
  rng = np.random.default_rng(seed)
  losses = []
  start = time.perf_counter()
  for step in range(1, steps + 1):
    batch = train[rng.choice(len(train), batch_size, replace=False)]
    key, step_key = jax.random.split(key)
    params, opt_state, states, loss = train_step(params, opt_state, states, batch, step_key)
    losses.append(loss)
    if step % log_every == 0 or step == steps:
      # compute() fetches two scalars per metric: the only host sync of the interval.
      say(f"step {step:4d}  -elbo {float(loss):7.2f}  train {_format(compute_states(states))}")
      states = empty_states(TRAIN_METRICS)
  losses = np.asarray(jax.device_get(losses))
  elapsed = time.perf_counter() - start
  after = evaluate(params)
  compiles = {"train_step": train_step._cache_size(), "eval_step": eval_step._cache_size()}
  say(f"held-out after {steps} steps ({elapsed:.1f} s): {_format(after)}")
  say(f"compilations: {compiles}")
  return {"losses": losses, "before": before, "after": after, "compiles": compiles,
          "seconds": elapsed}


def _format(values):
  return "  ".join(f"{name} {value:.4f}" for name, value in values.items())


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--log-every", type=int, default=100)
  parser.add_argument("--learning-rate", type=float, default=2e-3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  main(steps=args.steps, batch_size=args.batch_size, log_every=args.log_every,
       learning_rate=args.learning_rate, seed=args.seed)
