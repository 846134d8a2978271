r"""The generation tables: GSM8K (exact match) and E2E (BLEU) with the real
SmolLM2-135M-Instruct, every method, before and after adaptation.

  python -m experiments.lm --task=gsm8k [--methods=...] [--seeds=3] [--full]
  python -m experiments.lm --task=e2e_nlg \
      [--config=configs/lm.py --config.KEY=VALUE ...]  # every run's config

Each run trains as configs/lm.py says, then decodes a fixed, seeded subset
of the test set greedily (beam search with --full on E2E) with the KV-cache
decoder and the run's final method state. Completions are kept in the run's
folder (completions.jsonl) next to its scores.
"""
import functools
import json
import os
import sys
import time
from typing import Optional

import numpy as np

from experiments import common, flags, held_out, papers, search
from experiments import ledger as ledger_lib
from experiments.scoring import SCORERS
from ntk_prefix import config as config_lib, methods, provenance

CONFIG = 'configs/lm.py'
WORKDIR = 'workdirs/experiments/lm'
TASK_NAMES = {'gsm8k': 'GSM8K test subset, exact match of #### N',
              'e2e_nlg': 'E2E test subset, BLEU (all references)'}
PROMPT = {  # as the training data (ntk_prefix.data.pipeline.PROMPTS)
    'gsm8k': 'Question: {text}\nAnswer:', 'e2e_nlg': 'Table: {text}\nText:'}


# ---------------------------------------------------------------- scoring


# ------------------------------------------------------------- test data
def test_set(config) -> tuple:
  """(prompts, references): a fixed seeded subset; E2E groups its rows by
  meaning representation, each with all of its references."""
  from ntk_prefix import build
  t, d = config.task, config.decode
  rows = build.split_rows(t, d.split)
  text = lambda v: v.decode() if isinstance(v, bytes) else v
  grouped = {}
  for r in rows:
    if t.name == 'e2e_nlg':
      grouped.setdefault(text(r['text']), []).append(text(r['target']))
    else:
      grouped[text(r['text'])] = [text(r['target'])]
  keys = list(grouped)
  if 0 < d.rows < len(keys):
    keys = [keys[i] for i in np.sort(
        np.random.RandomState(1234).permutation(len(keys))[:d.rows])]
  return ([PROMPT[t.name].format(text=k) for k in keys],
          [grouped[k] for k in keys])


# --------------------------------------------------------------- decoding
@functools.lru_cache(maxsize=2)
def base_model(path: str):
  from ntk_prefix import checkpoints
  from ntk_prefix.checkpoints.paths import resolve
  full = resolve(path)
  cfg, frozen, _ = checkpoints.load(full)
  tokenizer = checkpoints.load_tokenizer(full)
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = 'left'
  return cfg, frozen, tokenizer


def decode(config, method, method_params, prompts: list) -> list:
  import jax
  import jax.numpy as jnp
  from ntk_prefix import generate
  cfg, frozen, tokenizer = base_model(config.model.path)
  frozen = jax.tree.map(jnp.asarray, frozen)
  decoder = generate.Decoder(cfg, frozen, method, method_params)
  d = config.decode
  kw = dict(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id or 0)
  out = []
  for start in range(0, len(prompts), d.batch_size):
    chunk = prompts[start:start + d.batch_size]
    batch = tokenizer(chunk, padding=True, return_tensors='np',
                      add_special_tokens=False)
    ids, mask = batch['input_ids'], batch['attention_mask']
    if d.beams > 1:
      res = generate.beam_search(decoder, ids, mask, d.max_new_tokens,
                                 beams=d.beams, prompt_mask=mask, **kw)
    else:
      res = generate.generate(decoder, ids, mask, d.max_new_tokens,
                              prompt_mask=mask, return_logits=False, **kw)
    out += [tokenizer.decode(t, skip_special_tokens=True)
            for t in res['tokens']]
  return out


def decode_and_score(config, workdir: str, method=None,
                     method_params=None) -> dict:
  """Scores of one run (cached in workdir/decode_scores.json with the
  decoding settings; other settings decode again)."""
  path = os.path.join(workdir, 'decode_scores.json')
  settings = {'task': config.task.name, **config.decode.to_dict()}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.pop('settings', None) == settings:
      return cached
  from ntk_prefix import export
  cfg, frozen, _ = base_model(config.model.path)
  if method is None:
    method, method_params = export.load(os.path.join(workdir, 'final'), cfg,
                                        frozen)
  t0 = time.time()
  prompts, references = test_set(config)
  completions = decode(config, method, method_params, prompts)
  scores = SCORERS[config.task.name](completions, references)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'completions.jsonl'), 'w') as f:
    for p, c, r in zip(prompts, completions, references):
      f.write(json.dumps({'prompt': p, 'completion': c,
                          'references': r}) + '\n')
  scores['decode_seconds'] = round(time.time() - t0, 1)
  scores['device'] = provenance.device()
  with open(path, 'w') as f:
    json.dump({**scores, 'settings': settings}, f, indent=2)
  return scores


def scores_only(decoded: dict) -> dict:
  """The metrics of decode_and_score, without how and where it ran."""
  return {k: v for k, v in decoded.items()
          if k not in ('decode_seconds', 'device')}


def before_adaptation(spec: str, root: str, base: dict,
                      ledger: Optional[str] = None) -> dict:
  """The 'none' row: the frozen model decoded as it is (deterministic),
  with its held-out token loss, the baseline of the trained rows'. Kept in
  the ledger like a run (kind 'frozen'): a fresh clone neither decodes nor
  evaluates it again."""
  config = common.configured(spec, {**base, 'method.name': 'none'})
  workdir = os.path.join(root, 'none', 'before_adaptation')
  run = common.run_key(root, workdir)
  kept = ledger_lib.find(ledger, run, config, kind='frozen')
  if kept:
    metrics, scores = kept['metrics'], kept['scores']
  else:
    cfg, _, _ = base_model(config.model.path)
    decoded = decode_and_score(config, workdir,
                               methods.from_config(config.method, cfg), {})
    scores = scores_only(decoded)
    metrics = {'eval_loss': held_out.initial_losses(config, ['none'],
                                                     1)['none'][0],
               'decode_seconds': decoded['decode_seconds'],
               'device': decoded.get('device', ''),
               'commit': provenance.process_commit()}
    ledger_lib.add(ledger, run, json.loads(config.to_json_best_effort()),
                   metrics, scores, kind='frozen')
  return {'method': 'none', 'trainable_params': 0, 'chosen': {},
          'select_metric': 'eval_loss', 'search': [],
          'runs': [{'seed': 0, 'scores': scores,
                    'select': metrics['eval_loss'],
                    'wall_seconds': metrics['decode_seconds'],
                    'device': metrics['device']}]}


def caption(c, task: str, full: bool) -> str:
  d = c.decode
  rows = 'all' if d.rows < 0 else d.rows
  unit = 'examples' if task == 'gsm8k' else 'meaning representations'
  how = 'greedily' if d.beams == 1 else f'with {d.beams} beams'
  metric = (
      '`last-number match` also accepts the last number written when no '
      '`#### N` is, since the model before adaptation never writes `####`.'
      if task == 'gsm8k' else
      "BLEU is sacrebleu's corpus BLEU of each completion's first line "
      'against all references of its meaning representation.')
  size = 'Full size' if full else 'Quick size (chosen for 2 CPU cores)'
  return (f'{size}: {c.total_steps} steps × batch {c.batch_size} on '
          f'`{c.task.train_split}` (at most {c.task.max_length} tokens), lr '
          f'chosen by the token loss on `{c.task.eval_split}` (grid in '
          f'configs/lm.py, {search.SEARCH_RULE}); {rows} test '
          f'{unit} decoded {how} (at most {d.max_new_tokens} new tokens). '
          '`none` is the model before adaptation (deterministic decoding: one '
          f'run). {metric} s/run is a training run\'s wall time without '
          'decoding (for `none`: its decoding).' + common.precision_note(c))


def results_folder(task: str) -> str:
  """Where the table writes by default: a folder per task."""
  return f'experiments/results/{task}'


def main(argv):
  module = config_lib.load_file(CONFIG)
  args = flags.parsed(argv, 'experiments.lm', CONFIG, WORKDIR,
                      methods=module.METHODS, unused=('tasks',))
  task = flags.one_of('task', flags.TASK.value or 'gsm8k', TASK_NAMES)
  base = args.base
  size = ',full' if args.full else ''
  spec = f'{CONFIG}:{task}{size}'
  out = args.out or results_folder(task)
  root = common.run_root(args.workdir, task + size.replace(',', '_'), base)
  c = common.configured(spec, base)
  metric = 'exact_match' if task == 'gsm8k' else 'bleu'
  results = {
      'title': f'{task}: SmolLM2-135M-Instruct (Q4_1 GGUF, frozen)',
      'metric': metric, 'scale': 100.0,
      'metric_label': ('exact match (%)' if metric == 'exact_match'
                       else 'BLEU'),
      'labels': {'lenient_match': 'last-number match (%)'},
      'select_label': 'held-out token loss by lr', 'seeds': args.seeds,
      'task_names': TASK_NAMES, 'tasks': {task: {'records': []}},
      'papers': papers.reported([task]),
      'caption': caption(c, task, args.full)}
  for method in args.methods:
    if method in methods.UNADAPTED:  # decoded as it is, never trained
      record = before_adaptation(spec, root, base,
                                 ledger_lib.path_for(out))
    else:
      score = lambda workdir, m: scores_only(
          decode_and_score(common.configured(spec, base), workdir))
      record = common.tune_and_repeat(
          spec, method, common.grid_for(
              module.get_search_space(task + size), method),
          args.seeds, root, select='eval_loss', higher_is_better=False,
          score=score, base=base,
          log=lambda s: print(s, file=sys.stderr, flush=True),
          ledger=ledger_lib.path_for(out), score_reads_checkpoint=True)
    results['tasks'][task]['records'].append(record)
    common.write_results(out, results, args.command)
  print(common.write_results(out, results, args.command))


if __name__ == '__main__':
  flags.run(main, CONFIG)
