"""Measuring one training step and one forward step of our methods.

A training step is what `train.py` runs: forward, backward over the method
pytree only, Adam update. Every figure is taken after compilation and
warm-up; times are medians of `repeats` runs.
"""
import datetime
import resource
import statistics
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_prefix import checkpoints, lm_loss, methods, models, provenance
from ntk_prefix.checkpoints.paths import resolve
from ntk_prefix.models.hooks import Adapter

FLOOR = 'frozen'  # the row name of the frozen-model floor


class FloorMethod(Adapter):
  """The floor: the frozen model trained in one vector, the scale of its first
  norm. Its gradient needs the activation backward through every layer but no
  weight gradient: the least any prefix-like method can cost."""

  def __init__(self, frozen_params):
    self.path = (('embed_norm',) if 'embed_norm' in frozen_params else
                 ('layer_0', 'attn_norm'))

  def init_params(self, frozen_params) -> dict:
    node = frozen_params
    for key in self.path:
      node = node[key]
    return {'scale': node['scale']}

  def backbone_params(self, frozen_params, method_params):
    def replace(tree, path):
      tree = dict(tree)
      if path:
        tree[path[0]] = replace(tree[path[0]], path[1:])
      else:
        tree['scale'] = method_params['scale']
      return tree
    return replace(frozen_params, self.path)


def load_model(name: str):
  """(model_cfg, frozen_params) of 'minilm', 'smollm2' or a folder."""
  cfg, frozen, _ = checkpoints.load(resolve(name))
  return cfg, jax.tree.map(jnp.asarray, frozen)


def as_dtype(frozen_params, dtype: str):
  """The frozen tree as training holds it under `model.dtype`
  (steps.place_frozen): every floating-point leaf in `dtype`."""
  d = jnp.dtype(dtype)
  return jax.tree.map(
      lambda x: x.astype(d) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      frozen_params)


def make_batch(cfg, batch: int, length: int, seed: int = 0) -> dict:
  """Random token ids, every position real (no padding)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, cfg.vocab_size, (batch, length), dtype=np.int32)
  return {'input_ids': ids, 'attention_mask': np.ones_like(ids),
          'labels': rng.integers(0, 2, (batch,), dtype=np.int32)}


def matmul_params(cfg, frozen_params) -> int:
  """Parameters that take part in a matmul per token: every 2-D kernel of the
  layers, plus the tied LM head for decoders (embedding lookups excluded)."""
  n = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(frozen_params)[0]:
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 2 and 'layer_' in name:
      n += leaf.size
  if cfg.is_decoder:
    n += cfg.vocab_size * cfg.hidden_size
  return n


def loss_fn(cfg, adapter, lm: bool):
  """The training loss: next-token over every position, or, for a batch
  with 'loss_positions' (instruction data), at the answer positions only
  (train.py's loss: the LM head on those rows alone)."""
  def loss(trainable, frozen_params, batch):
    method_params = trainable['method']
    inputs = {k: batch[k] for k in ('input_ids', 'attention_mask',
                                    'segment_ids') if k in batch}
    gathered = lm and 'loss_positions' in batch
    out = models.apply(cfg, frozen_params, method_params, inputs,
                       adapter=adapter, lm_logits=lm and not gathered)
    if gathered:
      h = lm_loss.gather_rows(out['hidden'], batch['loss_positions'])
      params = adapter.backbone_params(frozen_params, method_params)
      nll, _ = lm_loss.cross_entropy(h.reshape(-1, h.shape[-1]),
                                     lm_loss.head_kernel(cfg, params),
                                     batch['loss_targets'].reshape(-1))
      w = batch['loss_weights'].reshape(-1)
      return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
    if lm:
      logits = out['logits'][:, :-1].astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['input_ids'][:, 1:]).mean()
    logits = models.classifier_logits(trainable['head'], out['pooled'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['labels']).mean()
  return loss


def nbytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes if not hasattr(x, 'nbytes') else x.nbytes
                 for x in jax.tree.leaves(tree)))


def _memory(compiled) -> Optional[int]:
  """XLA's own account of the step: arguments + outputs + temporaries."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # not every backend reports it
    return None


def xla_cost(compiled, key: str) -> Optional[float]:
  """XLA's cost analysis of the compiled step: 'flops' or 'bytes accessed'
  (its memory traffic, which bounds a step on a CPU whose extra FLOPs are
  few; deterministic, unlike a time)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost[key])
  except Exception:  # not every backend reports it
    return None


def stamp(module: str, argv: Optional[list], out: str, **extra) -> dict:
  """What a benchmark's own results file records: the command that reruns
  it, the commit (its results folder not counting), date, device, jax."""
  args = sys.argv[1:] if argv is None else argv
  return dict(command=' '.join([f'python -m {module}', *args]),
              commit=provenance.git_commit((out,)),
              date=datetime.date.today().isoformat(),
              device=provenance.device(), jax=jax.__version__, **extra)


def device_peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def process_peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Step:
  """A compiled train step and forward step for one method on one model."""

  def __init__(self, cfg, frozen_params, method_name: str, options: dict,
               batch: dict, lm: bool, seed: int = 0):
    self.method_name = method_name
    if method_name == FLOOR:
      adapter = FloorMethod(frozen_params)
      params = adapter.init_params(frozen_params)
    else:
      adapter = methods.get(method_name, cfg, options)
      params = adapter.init(jax.random.PRNGKey(seed), frozen_params)
    params = {'method': params}
    if not lm:  # the task head, beside the method state
      params['head'] = models.init_classifier_head(jax.random.PRNGKey(1), cfg,
                                                   2)
    params = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)
    self.param_count = methods.count_params(params)
    loss = loss_fn(cfg, adapter, lm)
    opt = optax.adam(1e-4)
    opt_state = opt.init(params)
    self.param_bytes = nbytes(params)
    self.opt_bytes = nbytes(opt_state)

    def train_step(params, opt_state, frozen_params, batch):
      value, grads = jax.value_and_grad(loss)(params, frozen_params, batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, value

    batch = jax.tree.map(jnp.asarray, batch)
    t0 = time.perf_counter()
    self.train = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        params, opt_state, frozen_params, batch).compile()
    self.compile_seconds = time.perf_counter() - t0
    self.forward = jax.jit(loss).lower(params, frozen_params, batch).compile()
    self.flops = xla_cost(self.train, 'flops')
    self.bytes_accessed = xla_cost(self.train, 'bytes accessed')
    self.memory_bytes = _memory(self.train)
    self.forward_memory_bytes = _memory(self.forward)
    self.state = (params, opt_state)
    self.frozen_params, self.batch = frozen_params, batch

  def run_train(self) -> float:
    t0 = time.perf_counter()
    params, opt_state, value = self.train(*self.state, self.frozen_params,
                                          self.batch)
    value.block_until_ready()
    self.state = (params, opt_state)
    return time.perf_counter() - t0

  def run_forward(self) -> float:
    t0 = time.perf_counter()
    self.forward(self.state[0], self.frozen_params,
                 self.batch).block_until_ready()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], float], repeats: int, warmup: int = 1) -> float:
  for _ in range(warmup):
    fn()
  return statistics.median(fn() for _ in range(repeats))


def matmul_rate(shape: tuple = (2048, 2048, 2048), repeats: int = 10,
                dtype=jnp.float32, result=None) -> float:
  """The machine's matmul rate in FLOP/s of [m, k] x [k, n] (float32 by
  default; `result` is preferred_element_type, None = the operands')."""
  m, k, n = shape
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k)).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n)).astype(dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=result))
  f(a, b).block_until_ready()

  def once():
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    return time.perf_counter() - t0
  return 2 * m * k * n / median_time(once, repeats)
