"""The stylised setting: one softmax-attention layer trained only in its prefix.

Our formalisation of the paper's setting (arXiv 2406.14036, Sec. 3), in the
style of two-layer NTK analyses: each example is a sequence X_i [L, d] with a
scalar target y_i; queries q_l = x_l W_q (W_q fixed at random) attend to m
prefix rows whose keys p_r [d] are trained and whose values a_r = +-1 are
fixed at random:

  softmax scaling:  f(X) = mean_l sum_r softmax_r(<q_l, p_r> / sqrt(d)) a_r
  ntk scaling:      f(X) = sqrt(m) * (the same)

Plain softmax gives each row a 1/m share (a mean-field scaling); sqrt(m)
puts each row's gradient at 1/sqrt(m), as in the NTK parameterisation of a
width-m layer. Prefix rows start N(0, I); gradient descent on the squared
loss takes the step 1 / lambda_max(K_0), so runs of different m are
comparable. The quantities the theorem speaks of, as functions of m: the loss
over steps, the kernel drift ||K_t - K_0|| / ||K_0||, and how far the prefix
rows move from their initialisation.
"""
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix.ntk.kernel import eigenspectrum, empirical_ntk, kernel_drift


@dataclasses.dataclass(frozen=True)
class Setting:
  """A fixed data set and fixed layer; only the prefix length varies."""
  n: int = 16  # training sequences
  length: int = 4  # tokens per sequence
  dim: int = 16
  scaling: str = 'ntk'  # or 'softmax'
  seed: int = 0

  def data(self):
    """(x [n, L, d], y [n], fixed query map) drawn from `seed`."""
    keys = jax.random.split(jax.random.PRNGKey(self.seed), 3)
    d = self.dim
    wq = jax.random.normal(keys[0], (d, d)) / np.sqrt(d)
    x = jax.random.normal(keys[1], (self.n, self.length, d))
    y = jax.random.normal(keys[2], (self.n,))
    return x, y / jnp.std(y), {'wq': wq}


def init_prefix(rng, m: int, dim: int) -> dict:
  """Trainable keys [m, d] ~ N(0, I); values +-1 (fixed, half each sign)."""
  signs = jnp.where(jnp.arange(m) % 2 == 0, 1.0, -1.0)
  return {'keys': jax.random.normal(rng, (m, dim)), 'values': signs}


def predict(keys: jax.Array, values: jax.Array, frozen: dict, x: jax.Array,
            scaling: str = 'ntk') -> jax.Array:
  """f(X) for x [n, L, d] -> [n]."""
  q = x @ frozen['wq']
  logits = jnp.einsum('nld,md->nlm', q, keys) / jnp.sqrt(x.shape[-1])
  out = jnp.mean(jax.nn.softmax(logits, axis=-1) @ values, axis=1)
  if scaling == 'ntk':
    return jnp.sqrt(jnp.float32(keys.shape[0])) * out
  if scaling == 'softmax':
    return out
  raise ValueError(f"scaling={scaling!r}; expected 'ntk' or 'softmax'.")


def loss(keys, values, frozen, x, y, scaling) -> jax.Array:
  return 0.5 * jnp.sum((predict(keys, values, frozen, x, scaling) - y) ** 2)


def train(setting: Setting, m: int, steps: int = 200,
          kernel_every: int = 50, lr_scale: float = 1.0) -> dict:
  """Full-batch gradient descent on the prefix keys, m rows.

  Returns the loss per step, the kernel drift and the prefix's movement every
  `kernel_every` steps, and K_0's spectrum.
  """
  x, y, frozen = setting.data()
  prefix = init_prefix(jax.random.PRNGKey(setting.seed + 1), m, setting.dim)
  keys0, values = prefix['keys'], prefix['values']
  fn = lambda k, xs: predict(k, values, frozen, xs, setting.scaling)
  k0 = empirical_ntk(fn, keys0, x)
  spectrum = eigenspectrum(k0)
  lr = lr_scale / spectrum[0]
  grad = jax.grad(loss)
  step = jax.jit(lambda k: k - lr * grad(k, values, frozen, x, y,
                                         setting.scaling))
  value = jax.jit(lambda k: loss(k, values, frozen, x, y, setting.scaling))
  keys, losses, checks = keys0, [], []
  for t in range(steps + 1):
    if t % kernel_every == 0 or t == steps:
      delta = np.asarray(keys - keys0)
      checks.append(dict(
          step=t, drift=kernel_drift(empirical_ntk(fn, keys, x), k0),
          distance=float(np.linalg.norm(delta) / np.linalg.norm(keys0)),
          max_row_distance=float(np.max(np.linalg.norm(delta, axis=1)))))
    losses.append(float(value(keys)))
    if t < steps:
      keys = step(keys)
  return dict(m=m, scaling=setting.scaling, lr=float(lr), loss=losses,
              checks=checks, spectrum=spectrum.tolist(),
              lambda_min=float(spectrum[-1]), lambda_max=float(spectrum[0]))


def sweep(lengths: Sequence[int], setting: Setting = Setting(),
          steps: int = 200, kernel_every: int = 50) -> list:
  """`train` for every prefix length, on the same data."""
  return [train(setting, m, steps, kernel_every) for m in lengths]
