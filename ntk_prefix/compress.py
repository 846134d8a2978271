r"""python -m ntk_prefix.compress --adapter=DIR --config=FILE.py[:arg] --out=DIR2

Compresses a trained explicit prefix into NTK-Attention state: for every
layer, (Z, k) are fitted so that the NTK term reproduces the attention over
the adapter's prefix on the task's training inputs (the trained estimator of
`ntk/approximation.py`, started from the closed form Z = sum phi(k_i) v_i^T,
k = sum phi(k_i)). The prefix then costs what NTK-Attention costs, whatever
its length.

  --adapter   a Prefix-Tuning / P-Tuning v2 export of this codebase (a run's
              best/ or final/), or a Hugging Face PEFT PREFIX_TUNING folder
  --config    the task and model the adapter was trained for (train's config
              file and --config.KEY=VALUE overrides)
  --out       a folder like a run's: config.json and final/ (the ntk_attention
              state), so `python -m ntk_prefix.generate --workdir=DIR2` decodes
              with it and `--config.init_from=DIR2/final` trains on from it;
              compress.json holds the report
  --steps     Adam steps per layer (300; 0: the closed form); --rows:
              training / held-out rows (64)

--out must be new, empty or an earlier compress output: a run folder or
the adapter itself would lose its config.json and final/.

Prints, per layer, the held-out attention error of the closed form and of the
fitted state; then the task metric and the train-step time before (explicit
prefix) and after (NTK-Attention).
"""
import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp

from ntk_prefix import atomic, config as config_lib, export, methods
from ntk_prefix import peft_format
from ntk_prefix.build import build
from ntk_prefix.data import batches
from ntk_prefix.models import layers
from ntk_prefix.models.transformer import Transformer
from ntk_prefix.ntk import approximation
from ntk_prefix.step_cost import step_cost
from ntk_prefix.steps import make_eval_step, place_frozen, run_eval

# The method whose state compression fits (its feature map and state).
TARGET = 'ntk_attention'

# What compress writes in --out, the report last.
REPORT = 'compress.json'
WRITES = ('final', 'config.json', REPORT)


class CompressError(ValueError):
  """An adapter that compress cannot take."""


def load_adapter(directory: str, model_cfg, frozen_params) -> tuple:
  """(method, params, task head or None) of an explicit-prefix adapter
  folder."""
  head = None
  try:  # another model's adapter, or a PEFT type we do not read
    if os.path.exists(os.path.join(directory, 'method.json')):
      method, params = export.load(directory, model_cfg, frozen_params)
      head = export.load_head(directory)
    elif os.path.exists(os.path.join(directory, 'adapter_config.json')):
      method, params = peft_format.load(directory, model_cfg)
    else:
      raise CompressError(
          f'--adapter={directory}: found neither method.json (a best/ or '
          'final/ export of this codebase) nor adapter_config.json (a PEFT '
          'adapter).')
  except methods.MethodError as e:
    raise CompressError(f'--adapter: {e} (--config names the model: '
                        '--config.model.path)') from None
  if method.explicit_prefix(params) is None:
    raise CompressError(
        f'--adapter={directory} holds a {method.name} state; compress needs '
        f'an explicit prefix: {" or ".join(methods.PREFIX_METHODS)} (or a '
        'PEFT PREFIX_TUNING adapter).')
  return method, params, head


def layer_qkv(cfg, frozen_params, method, params, inputs: dict) -> list:
  """Per layer (q [b, t, heads, d], k, v [b, t, kv_heads, d]), post-RoPE, of
  the model running with the adapter's prefix."""
  module = Transformer(cfg, method, lm_logits=False)
  backbone = method.backbone_params(frozen_params, params)
  _, state = module.apply(
      {'params': backbone}, params, inputs,
      capture_intermediates=lambda mdl, _: mdl.name in ('query', 'key',
                                                       'value'))
  inter = state['intermediates']
  mask = jnp.asarray(inputs['attention_mask'])
  positions = module.bind({'params': backbone}).position_ids(
      mask, method.position_offset())
  b, t = mask.shape
  out = []
  for i in range(cfg.num_layers):
    attn = inter[f'layer_{i}']['attn']
    q, k, v = (attn[name]['__call__'][0].reshape(b, t, -1, cfg.head_dim)
               for name in ('query', 'key', 'value'))
    if cfg.rope_theta is not None:
      q = layers.rope(q, positions, cfg.rope_theta)
      k = layers.rope(k, positions, cfg.rope_theta)
    out.append((q, k, v))
  return out


def _inputs(batch: dict) -> dict:
  return {k: jnp.asarray(v) for k, v in batch.items()
          if k in ('input_ids', 'attention_mask', 'token_type_ids')}


def compress(config, adapter: str, out: str, steps: int = 300,
             rows: int = 64, log=print) -> dict:
  """Fits the NTK state, writes `out`, returns the report."""
  from tqdm import tqdm
  _check_arguments(out, steps, rows)
  s = build(config)
  cfg = s.model_cfg
  frozen = jax.tree.map(jnp.asarray, s.frozen_params)
  source, source_params, head = load_adapter(adapter, cfg, frozen)
  if s.kind != 'generation' and head is None:
    raise CompressError(
        f'--adapter={adapter} has no task head, and task {s.config.task.name} '
        'is a classification: compress a best/ or final/ export of a run on '
        'this task (it holds the head trained with the prefix).')
  kv = source.explicit_prefix(source_params)
  fit_rows = batches.train_batch(s.train_ds, 0, rows, config.seed)
  held_out = next(batches.eval_batches(s.eval_ds, rows))
  test_mask = held_out['attention_mask'] * held_out['weights'][:, None]
  qkv_fit = layer_qkv(cfg, frozen, source, source_params, _inputs(fit_rows))
  qkv_test = layer_qkv(cfg, frozen, source, source_params, _inputs(held_out))
  zs, ks, errors = [], [], []
  for i in tqdm(range(cfg.num_layers), desc='compress', disable=not
                config.progress):
    problem = approximation.Problem(
        qkv_fit[i], qkv_test[i], kv['k'][i][None], kv['v'][i][None],
        train_mask=jnp.asarray(fit_rows['attention_mask']),
        test_mask=jnp.asarray(test_mask), causal=cfg.causal)
    goal = approximation.target(problem, 'test')
    error = lambda z, k: approximation.relative_error(
        approximation.estimate(problem, 'test', z, k, None), goal, test_mask)
    closed = error(*approximation.closed_form(problem, None))
    z, k = approximation.fit(problem, None, steps)
    errors.append({'layer': i, 'closed_form': closed, 'fitted': error(z, k)})
    log(f'layer {i}: held-out attention error {closed:.2e} closed form, '
        f'{errors[-1]["fitted"]:.2e} fitted')
    zs.append(z)
    ks.append(k)
  ntk = methods.get(TARGET, cfg, {'init': 'zeros'})
  state = {'z': jnp.stack(zs), 'k': jnp.stack(ks)}
  ntk.check_params(state)
  # The task head trained with the prefix stays with the compressed state.
  extra = {} if head is None else {'head': head}

  before_setup = dataclasses.replace(s, method=source)
  after_setup = dataclasses.replace(
      s, method=ntk, config=_ntk_config(config))
  report = {'adapter': adapter, 'source_method': source.name,
            'prefix_length': int(kv['k'].shape[1]), 'fit_steps': steps,
            'rows': rows, 'layers': errors}
  for name, setup, params in (
      ('before', before_setup, {'method': source_params, **extra}),
      ('after', after_setup, {'method': state, **extra})):
    placed, sharding = place_frozen(setup)
    evaluate = make_eval_step(setup, sharding)
    metrics = run_eval(setup, evaluate, params, placed)
    if s.test_ds is not None:  # the task's reported split, scored once
      test = run_eval(setup, evaluate, params, placed, s.test_ds)
      metrics.update({'test_' + k[len('eval_'):]: v for k, v in test.items()})
    seconds, peak = step_cost(setup, params, batches.train_batch(
        s.train_ds, 0, config.batch_size, config.seed))
    report[name] = {**metrics, 'train_step_seconds': seconds,
                    'train_step_bytes': peak}
    log(f'{name}: ' + ', '.join(f'{k}={v:.4g}' for k, v in
                                report[name].items() if v is not None))
  os.makedirs(out, exist_ok=True)
  export.save(os.path.join(out, 'final'), ntk, state, config.model.path, head)
  atomic.write_text(os.path.join(out, 'config.json'),
                    after_setup.config.to_json_best_effort(indent=2))
  atomic.write_json(os.path.join(out, REPORT), report)
  return report


def _check_arguments(out: str, steps: int, rows: int) -> None:
  """Before anything loads: nothing the user keeps is overwritten."""
  if steps < 0:
    raise CompressError(f'--steps={steps}: use 0 (the closed form) or more '
                        'Adam steps per layer (300 by default).')
  if rows < 1:
    raise CompressError(f'--rows={rows}: the fit needs at least one training '
                        'row (64 by default).')
  # out/final and out/config.json are written: a run's folder (or the
  # adapter itself) would lose its own. A folder compress wrote, whole or
  # cut short, is written again.
  if os.path.isdir(out) and not (set(os.listdir(out)) <= set(WRITES) or
                                 os.path.exists(os.path.join(out, REPORT))):
    raise CompressError(
        f'--out={out} already holds files that compress did not write (a '
        'run folder or an adapter would lose its config.json and final/): '
        'name a new or empty folder.')


def _ntk_config(config):
  c = config.copy_and_resolve_references()
  config_lib.override(c, 'method.name', TARGET)
  config_lib.override(c, 'method.preset', '')
  config_lib.override(c, f'method.{TARGET}.init', 'zeros')
  return c


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
      prog='python -m ntk_prefix.compress', description=__doc__.split('\n')[2],
      epilog='--config=FILE.py[:arg] and --config.KEY=VALUE as for train.')
  parser.add_argument('--adapter', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--rows', type=int, default=64)
  if any(a in ('-h', '--help') for a in argv):
    parser.print_help()
    return
  own = [a for a in argv if not a.startswith('--config')]
  config, _ = config_lib.from_argv([a for a in argv
                                    if a.startswith('--config')])
  args = parser.parse_args(own)
  try:
    compress(config, args.adapter, args.out, args.steps, args.rows)
  except CompressError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main()
