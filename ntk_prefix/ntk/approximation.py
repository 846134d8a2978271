"""NTK-Attention against attention over an explicit prefix of m rows.

The paper's Section 4.4 experiment, done with three corrections to the
official script: the error is measured on the input queries only (the
prefix rows are keys and values, never scored), normalised per element, and
on held-out inputs that the trained estimator never saw.

Target: for each input sequence X, every position's attention output over
[prefix; X]. An estimator replaces the prefix by an NTK state (Z, k) and the
output by NTK-Attention over X alone (`models.attention.attend`):
  closed_form  Z = sum_i phi(k_i) v_i^T, k = sum_i phi(k_i) (no data);
  trained      Z, k fitted by Adam to the training inputs' targets, starting
               from the closed form.
Error: mean((estimate - target)^2) / mean(target^2) over held-out elements.

Two problems: 'random' (Gaussian weights and tokens) and 'minilm' (layer 0,
head 0 of the pretrained all-MiniLM-L6-v2: its real W_q, W_k, W_v and biases,
applied to real embeddings of random vocabulary tokens for both the inputs
and the prefix rows).
"""
import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_prefix.models.attention import attend
from ntk_prefix.models.features import prefix_summary
from ntk_prefix.models.hooks import NtkState
from ntk_prefix.ntk import fixed_terms


@dataclasses.dataclass(frozen=True)
class Problem:
  """Queries [n, L, heads, d] and keys/values [n, L, kv_heads, d] of train
  and test inputs, and the prefix's keys/values [1, m, kv_heads, d]; masks
  [n, L] of real tokens (None: all real) and whether inputs are causal."""
  train: tuple
  test: tuple
  prefix_k: jax.Array
  prefix_v: jax.Array
  train_mask: Optional[jax.Array] = None
  test_mask: Optional[jax.Array] = None
  causal: bool = False

  def mask(self, split: str) -> Optional[jax.Array]:
    return getattr(self, f'{split}_mask')


def random_problem(m: int, dim: int = 32, length: int = 16, n_train: int = 64,
                   n_test: int = 64, seed: int = 0) -> Problem:
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  w = [jax.random.normal(k, (dim, dim)) / np.sqrt(dim) for k in keys[:3]]

  def qkv(tokens):  # [..., dim] -> three [..., 1, dim]
    return tuple((tokens @ wi)[..., None, :] for wi in w)

  x = jax.random.normal(keys[3], (n_train + n_test, length, dim))
  prefix = jax.random.normal(keys[4], (1, m, dim))
  q, k, v = qkv(x)
  _, pk, pv = qkv(prefix)
  return Problem((q[:n_train], k[:n_train], v[:n_train]),
                 (q[n_train:], k[n_train:], v[n_train:]), pk, pv)


@functools.lru_cache(maxsize=2)
def _pretrained(model: str):
  from ntk_prefix import checkpoints
  from ntk_prefix.checkpoints.paths import resolve
  cfg, frozen, _ = checkpoints.load(resolve(model))
  if cfg.family not in ('bert', 'roberta'):
    raise ValueError(f'model={model!r} is a {cfg.family}; the pretrained '
                     'problem takes a BERT-family encoder (its layer-0 input '
                     'is the embedding output).')
  return cfg, jax.tree.map(jnp.asarray, frozen)


def pretrained_problem(m: int, model: str = 'minilm', head: int = 0,
                       length: int = 16, n_train: int = 64, n_test: int = 64,
                       seed: int = 0) -> Problem:
  cfg, p = _pretrained(model)
  d = cfg.head_dim
  cols = slice(head * d, (head + 1) * d)
  rng = np.random.default_rng(seed)

  def embed(ids, positions):  # the encoder's own embedding layer
    x = (p['tokens']['embedding'][ids] + p['positions']['embedding'][positions]
         + p['types']['embedding'][0])
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    x = (x - mu) / jnp.sqrt(var + cfg.norm_eps)
    return x * p['embed_norm']['scale'] + p['embed_norm']['bias']

  def proj(x, name):
    dense = p['layer_0']['attn'][name]['dense']
    return (x @ dense['kernel'][:, cols] + dense['bias'][cols])[..., None, :]

  n = n_train + n_test
  ids = rng.integers(1000, cfg.vocab_size, (n, length))
  x = embed(ids, np.broadcast_to(np.arange(length), (n, length)))
  q, k, v = (proj(x, name) for name in ('query', 'key', 'value'))
  prefix = embed(rng.integers(1000, cfg.vocab_size, (1, m)),
                 rng.integers(0, cfg.max_positions, (1, m)))
  return Problem((q[:n_train], k[:n_train], v[:n_train]),
                 (q[n_train:], k[n_train:], v[n_train:]),
                 proj(prefix, 'key'), proj(prefix, 'value'))


def target(problem: Problem, split: str) -> jax.Array:
  q, k, v = getattr(problem, split)
  return attend(q, k, v, key_mask=problem.mask(split),
                causal=problem.causal, prefix_k=problem.prefix_k,
                prefix_v=problem.prefix_v, prefix_chunk=8192)


def estimate(problem: Problem, split: str, z, k_sum,
             projection: Optional[jax.Array]) -> jax.Array:
  return _ntk_attend(getattr(problem, split), problem.mask(split),
                     problem.causal, z, k_sum, projection)


def _ntk_attend(qkv: tuple, mask, causal: bool, z, k_sum, projection):
  q, k, v = qkv
  return attend(q, k, v, key_mask=mask, causal=causal,
                ntk=NtkState(z=z, k=k_sum, projection=projection))


def _weights(out: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Per-element weights: 1 on real query positions ([n, L] mask)."""
  if mask is None:
    return jnp.ones(out.shape[:2], out.dtype)[..., None, None]
  return jnp.asarray(mask, out.dtype)[..., None, None]


def relative_error(estimate_: jax.Array, target_: jax.Array,
                   mask: Optional[jax.Array] = None) -> float:
  """mean((estimate - target)^2) / mean(target^2) over real positions."""
  w = _weights(target_, mask)
  return float(jnp.sum(w * (estimate_ - target_) ** 2) /
               jnp.sum(w * target_ ** 2))


def closed_form(problem: Problem, projection: Optional[jax.Array]) -> tuple:
  """Z and k of the prefix, one per query head (GQA heads share theirs)."""
  z, k = prefix_summary(problem.prefix_k[0], problem.prefix_v[0], projection)
  groups = problem.train[0].shape[2] // problem.prefix_k.shape[2]
  return jnp.repeat(z, groups, axis=0), jnp.repeat(k, groups, axis=0)


def fit(problem: Problem, projection: Optional[jax.Array], steps: int = 300,
        lr: float = 1e-2) -> tuple:
  """Z and k trained by Adam on the training inputs' targets.

  The closed form's entries grow ~m, so Adam works on (Z, k) / s with s the
  closed-form k's mean magnitude: the same step size suits every m.
  """
  z0, k0 = closed_form(problem, projection)
  scale = jnp.maximum(jnp.mean(jnp.abs(k0)), 1e-6)
  goal = target(problem, 'train')
  weights = _weights(goal, problem.mask('train'))
  data = {'fixed': fixed_terms.fixed_terms(problem, 'train', projection),
          'goal': fixed_terms.head_major(goal),
          'weights': fixed_terms.head_major(
              jnp.broadcast_to(weights, goal.shape[:3] + (1,))),
          'scale': scale}
  params = {'z': z0 / scale, 'k': k0 / scale}
  params = _adam(params, data, steps, lr)
  return params['z'] * scale, params['k'] * scale


def _fit_loss(params, data):
  out = fixed_terms.combine(data['fixed'], params['z'] * data['scale'],
                            params['k'] * data['scale'])
  goal, w = data['goal'], data['weights']  # [heads, N, d], [heads, N, 1]
  # The mean over real elements (exactly jnp.mean without a mask).
  return jnp.sum(w * (out - goal) ** 2) / (jnp.sum(w) * goal.shape[2])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _adam(params, data, steps: int, lr: float):
  """`steps` Adam steps on _fit_loss in one program: one compile per shape
  (every layer of a model shares it), no dispatch per step. The inputs go in
  as arguments: closed over, they became constants that XLA spent seconds
  constant-folding on every compile."""
  opt = optax.adam(lr)

  def step(_, carry):
    params, state = carry
    updates, state = opt.update(jax.grad(_fit_loss)(params, data), state)
    return optax.apply_updates(params, updates), state

  return jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))[0]


def feature_projection(feature_map: str, num_features: int, dim: int,
                       seed: int = 0) -> Optional[jax.Array]:
  if feature_map == 'elu':
    return None
  return jax.random.normal(jax.random.PRNGKey(seed), (num_features, dim))


def sweep(lengths: Sequence[int], problem: str = 'random',
          feature_maps: Sequence[tuple] = (('elu', 0), ('random', 64),
                                           ('random', 1024)),
          fit_steps: int = 300, seed: int = 0) -> list:
  """Held-out relative error of both estimators for every m and feature map.

  Rows: {problem, m, feature_map, num_features, estimator, error,
  train_error}.
  """
  make = random_problem if problem == 'random' else pretrained_problem
  rows = []
  for m in lengths:
    prob = make(m, seed=seed)
    dim = prob.prefix_k.shape[-1]
    goal_train, goal_test = target(prob, 'train'), target(prob, 'test')
    for name, r in feature_maps:
      projection = feature_projection(name, r, dim, seed)
      for estimator in ('closed_form', 'trained'):
        z, k = (closed_form(prob, projection) if estimator == 'closed_form'
                else fit(prob, projection, fit_steps))
        rows.append(dict(
            problem=problem, m=m, feature_map=name,
            num_features=dim if name == 'elu' else r, estimator=estimator,
            error=relative_error(estimate(prob, 'test', z, k, projection),
                                 goal_test),
            train_error=relative_error(
                estimate(prob, 'train', z, k, projection), goal_train)))
  return rows
