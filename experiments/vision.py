r"""The vision table: every method fine-tuning a ViT on an image set.

  python -m experiments.vision                      # PIPELINE CHECK (below)
  python -m experiments.vision --dataset=tfds:cifar100 \
      --config=configs/vision.py \
      --config.model.path=/path/to/vit-base-patch16-224-in21k [--full]

The NTK-Attention paper fine-tunes ViT-B/16 (in21k) on CIFAR-100 and
Food-101. Neither a pretrained ViT nor an image set is available offline
here, so with no --config.model.path this writes a tiny randomly
initialised ViT and runs the whole table on scikit-learn's 8x8 digits: it
proves the pipeline (data, every method on a vision backbone, search,
seeds, results folder), and its numbers are not a result.
"""
import os

from absl import flags as absl_flags

from experiments import common, flags, search
from ntk_prefix import config as config_lib

CONFIG = 'configs/vision.py'
WORKDIR = 'workdirs/experiments/vision'
DATASET = absl_flags.DEFINE_string(
    'dataset', 'digits', "tfds:NAME of a prepared tfds image set, or 'digits' "
    '(experiments.vision).')


def tiny_random_vit(path: str) -> str:
  """A 2-layer, 32-wide ViT for 32x32 inputs, random weights, HF format."""
  if os.path.exists(os.path.join(path, 'config.json')):
    return path
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=32,
      num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      num_labels=10, initializer_range=0.3)  # larger than HF's 0.02 so a
  # random network passes the image through rather than the CLS embedding
  transformers.ViTForImageClassification(config).save_pretrained(path)
  return path


def main(argv):
  module = config_lib.load_file(CONFIG)
  args = flags.parsed(argv, 'experiments.vision', CONFIG, WORKDIR,
                      methods=module.METHODS, unused=('task', 'tasks'))
  dataset, base = DATASET.value, dict(args.base)
  check = 'model.path' not in base
  if check:
    if dataset != 'digits':
      raise SystemExit(f'--dataset={dataset} needs a pretrained ViT: '
                       f'pass --config={CONFIG} --config.model.path=DIR.')
    base['model.path'] = tiny_random_vit(
        os.path.join(args.workdir, 'tiny_random_vit'))
  size = ',full' if args.full else ''
  c = common.configured(f'{CONFIG}:{dataset}{size}', base)
  name = dataset.replace('tfds:', '')
  out = args.out or ('experiments/results/vision_pipeline_check' if check
                     else f'experiments/results/vision_{name}')
  title = ('PIPELINE CHECK, NOT A RESULT: tiny randomly initialised ViT on '
           '8x8 digits' if check else
           f'Vision: {os.path.basename(c.model.path.rstrip("/"))} on {name}')
  results = {
      'title': title, 'metric': 'test_accuracy',
      'metric_label': 'test accuracy (%)', 'scale': 100.0,
      'select_label': 'held-out accuracy by lr', 'seeds': args.seeds,
      'task_names': {dataset: name}, 'papers': [],
      'caption': (
          ('The weights are random and the images are 8x8 digits upsampled '
           'to 32x32: this table shows that every method trains a vision '
           'backbone through the whole experiment pipeline, nothing about '
           'pretrained ViTs. ' if check else '') +
          f'{c.total_steps} steps × batch {c.batch_size} on '
          f'`{c.task.train_split}`, lr chosen on `{c.task.eval_split}`, '
          f'scored on `{c.task.test_split}`; grid in configs/vision.py, '
          f'{search.SEARCH_RULE}.')}
  print(common.classification_tables(
      CONFIG, module, [dataset], args.methods, args.seeds,
      size, base, args.workdir, out, args.command, results))


if __name__ == '__main__':
  flags.run(main, CONFIG)
