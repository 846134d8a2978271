r"""The generation tables with the real SmolLM2-135M-Instruct (GGUF):
GSM8K (exact match of the final `#### N`) and E2E (BLEU against all
references), every method, learning rate searched per method.

  python -m experiments.lm --task=gsm8k [--full]
  python -m experiments.lm --task=e2e_nlg [--full]

`get_config('gsm8k')` is one training run (answer tokens carry the loss);
the learning rate is chosen by the token loss on rows held out of the
training set, and the fixed test subset is decoded once per run (`decode`).
"""
import ml_collections

from ntk_prefix import methods

from ntk_prefix import sweep
from ntk_prefix.config import base_config

# Sizes for this machine (2 cores, ~250 tokens/s through SmolLM2 with
# gradients) and the papers' sizes (--full: real hardware).
QUICK = {
    # Decoding dominates here (~0.5 s a step for 25 rows): 50 problems.
    'gsm8k': dict(max_length=320, holdout=100, steps=40, batch=4,
                  test_rows=50, max_new_tokens=192, beams=1),
    'e2e_nlg': dict(max_length=96, holdout=200, steps=60, batch=8,
                    test_rows=100, max_new_tokens=64, beams=1),
}
FULL = {
    # GSM8K: 3 epochs of the 7,373 remaining train rows, the whole test set.
    'gsm8k': dict(max_length=400, holdout=100, steps=3 * 7373 // 16,
                  batch=16, test_rows=-1, max_new_tokens=320, beams=1),
    # E2E as Prefix-Tuning: 5 epochs, beam search 5, all 630 test MRs.
    'e2e_nlg': dict(max_length=128, holdout=200, steps=5 * 41861 // 10,
                    batch=10, test_rows=-1, max_new_tokens=96, beams=5),
}
# The model before adaptation first, then every registered method, each
# beside its presets that change an option (the official runs).
METHODS = methods.table_rows(methods.UNADAPTED + methods.ADAPTING)
# Four points each (this machine searches the middle two first): each
# method's own `decoder_lr_grid` where it has one, else its `lr_grid`; the
# model before adaptation is decoded, never trained.
LR_GRID = {n: () if not cls.adapts else tuple(cls.decoder_lr_grid or
                                              cls.lr_grid)
           for n, cls in methods.REGISTRY.items()}


def get_config(arg: str = 'gsm8k'):
  task, *flags = arg.split(',')
  table = FULL if 'full' in flags else QUICK
  if task not in table:
    raise ValueError(f'configs/lm.py:{arg}: task {task!r} is not one of '
                     f'{sorted(table)}.')
  size = table[task]
  c = base_config()
  c.model.path = 'smollm2'
  # bf16 frozen weights, float32 accumulation and state: 2.0x faster train
  # steps on this machine's AMX CPU (benchmarks/precision.md), and as good:
  # NTK-Attention on E2E, held-out loss 1.631 at its best rate and BLEU
  # 55.4 (seed 0), against 1.617 (seeds 1.617-1.668) and 54.5 in float32.
  # SmolLM2's weights are Q4_1 already. --config.model.dtype=float32 to
  # compare.
  c.model.dtype = 'bfloat16'
  c.task.name = task
  c.task.max_length = size['max_length']
  c.task.truncate = True
  c.task.train_split = f'train[:-{size["holdout"]}]'
  c.task.eval_split = f'train[-{size["holdout"]}:]'
  c.method.name = 'ntk_attention'
  c.batch_size = size['batch']
  c.eval_batch_size = 8
  c.total_steps = size['steps']
  c.optimizer.warmup_steps = max(size['steps'] // 10, 1)
  c.eval_every = c.checkpoint_every = (
      max(c.total_steps // 10, 1) if 'full' in flags else c.total_steps)
  c.log_every = 10
  c.best_metric = 'eval_token_accuracy'
  c.progress = False
  with c.unlocked():  # a field of this table's own (the base is locked)
    c.decode = ml_collections.ConfigDict(dict(
        split='test', rows=size['test_rows'],  # fixed seeded subset; -1 = all
        max_new_tokens=size['max_new_tokens'], beams=size['beams'],
        batch_size=25))
  return c


def get_search_space(arg: str = 'gsm8k') -> dict:
  """method -> override dicts, each run with seed 0; the best goes on."""
  return sweep.search_space(LR_GRID, full='full' in arg.split(',')[1:])
