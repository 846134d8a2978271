"""python -m ntk_prefix.methods --model=PATH [--num_labels=2] [--presets]

Prints the trainable-parameter count of every method (default options, plus
a classification head for encoders/vision) on the checkpoint at PATH; with
--presets, every method's named presets, their values and their sources.
"""
import argparse

import jax

from ntk_prefix import checkpoints, methods, models
from ntk_prefix.checkpoints.paths import resolve


def table(path: str, num_labels: int) -> str:
  cfg, frozen, _ = checkpoints.load(resolve(path))
  head = 0
  if not cfg.is_decoder:
    head = methods.count_params(models.init_classifier_head(
        jax.random.PRNGKey(0), cfg, num_labels))
  frozen_count = methods.count_params(frozen)
  rows = ['| method | trainable params | head | total | % of backbone |',
          '|---|---:|---:|---:|---:|']
  for name in methods.NAMES:
    method = methods.get(name, cfg)
    n = methods.count_params(method.state_shapes(frozen))
    rows.append(f'| {name} | {n:,} | {head:,} | {n + head:,} | '
                f'{100 * (n + head) / frozen_count:.3f} |')
  title = (f'{cfg.family}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, '
           f'{cfg.num_heads}/{cfg.num_kv_heads} heads: {frozen_count:,} '
           'frozen parameters')
  return title + '\n\n' + '\n'.join(rows)


def presets_text() -> str:
  """Every method's presets: values, source, and where we differ."""
  out = []
  for name, cls in methods.REGISTRY.items():
    for preset_name, p in cls.presets.items():
      values = ', '.join(f'{k}={v!r}' for k, v in p.options.items())
      out.append(f'{name} / {preset_name}: {values}')
      for task, extra in p.per_task.items():
        out.append(f'  task {task}: ' + ', '.join(
            f'{k}={v!r}' for k, v in extra.items()))
      out.append(f'  source: {p.source}')
      if p.differs:
        out.append(f'  differs: {p.differs}')
      if p.needs_tokenizer:
        out.append('  needs a tokenizer: not for vision models')
  return '\n'.join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='minilm',
                      help="checkpoint folder, .gguf file, 'minilm' or "
                      "'smollm2'")
  parser.add_argument('--num_labels', type=int, default=2)
  parser.add_argument('--presets', action='store_true',
                      help='also list every preset with its source')
  args = parser.parse_args()
  print(table(args.model, args.num_labels))
  if args.presets:
    print('\nPresets (--config.method.preset=NAME):\n')
    print(presets_text())


if __name__ == '__main__':
  main()
