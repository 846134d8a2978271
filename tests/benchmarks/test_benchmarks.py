"""The benchmark script runs and writes the promised files (no timing is
asserted: speed is measured by the script, not by tests)."""
import json
import os
import re

import pytest

from benchmarks import harness, run
from ntk_prefix.methods import MIXABLE


def test_bench_writes_rows_and_tables(hf_checkpoint, tmp_path):
  encoder, _ = hf_checkpoint('bert')
  out = str(tmp_path / 'results')
  common = [f'--encoder={encoder}', '--lengths=0,300', '--repeats=1',
            '--seq_len=8', '--prefix_batch=2', f'--out={out}']
  # Two runs into one folder: the second keeps the first's rows.
  run.main(['--sweeps=mixed'] + common)
  run.main(['--sweeps=prefix_length'] + common)
  with open(os.path.join(out, 'latest.json')) as f:
    rows = json.load(f)
  for key in ('method', 'prefix_length', 'step_seconds', 'ratio_to_frozen',
              'peak_memory_bytes'):
    assert all(key in r for r in rows if r['sweep'] != 'mixed')
  # The figure and its noise: the median of each round's ratio, every round.
  for r in rows:
    if r['sweep'] == 'prefix_length':
      assert len(r['ratio_to_frozen_rounds']) == 1
      assert r['ratio_to_frozen'] == r['ratio_to_frozen_rounds'][0]
  lengths = {(r['method'], r['prefix_length']) for r in rows
             if r['sweep'] == 'prefix_length'}
  assert ('ntk_attention', 300) in lengths and ('p_tuning_v2', 300) in lengths
  for name in ('latest.md', 'meta.json', 'step_time_vs_m.png'):
    assert os.path.getsize(os.path.join(out, name)) > 0
  mixed = [r for r in rows if r['sweep'] == 'mixed']
  assert {r['method'] for r in mixed} == set(MIXABLE)
  with open(os.path.join(out, 'latest.md')) as f:
    md = f.read()
  assert 'Cost against prefix length' in md and 'Mixed-adapter' in md


# One test per model, so the two halves of the longest sweep run in parallel.
@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_methods_sweep_measures_every_method(hf_checkpoint, tmp_path, family):
  path, _ = hf_checkpoint(family)
  rows = run.sweep_methods(path, 4, 8, 1, rate=1e9)
  assert {r['method'] for r in rows} == {harness.FLOOR, *run.METHODS}
  weight_bytes = 4 * harness.matmul_params(*harness.load_model(path))
  for r in rows:
    assert len(r['ratio_to_frozen_rounds']) == 1
    assert r['ratio_to_frozen'] == r['ratio_to_frozen_rounds'][0]
    # Adam keeps two moments: trainable + optimizer state = 3x the
    # parameters (plus Adam's step counter), and nothing for the frozen tree.
    assert r['optimizer_bytes'] - 2 * r['trainable_bytes'] <= 8
    # XLA's account of each step's memory traffic: every step reads at least
    # the float32 frozen weights it multiplies by.
    assert r['step_bytes_xla'] > weight_bytes, r['method']
  out = str(tmp_path)
  run.write(rows, 'test', 1e9, 0.0, out)
  with open(os.path.join(out, 'latest.md')) as f:
    md = f.read()
  assert all(f'| {m} |' in md for m in run.METHODS)


def test_ratio_to_frozen_cancels_a_machine_drifting_under_the_sweep():
  """A machine that slows steadily while a sweep runs: each ratio divides by
  the frozen steps on either side of it, so it is the configuration's own
  cost ratio however far into the round it was timed."""
  clock = [0]

  class Fake:
    def __init__(self, cost):
      self.cost = cost

    def run_train(self):
      clock[0] += 1
      return self.cost * (1 + 0.05 * clock[0])  # 5% slower every call

  steps = [Fake(1.0), Fake(1.2), Fake(3.0), Fake(1.05)]
  medians, ratios = run.timed_round_robin(steps, 3, 'train', floor=0)
  for rounds, cost in zip(ratios, [1.0, 1.2, 3.0, 1.05]):
    assert rounds == pytest.approx([cost] * 3, rel=1e-9)
  # The medians alone would not tell: the last step reads slower than the
  # second although it costs less.
  assert medians[3] > medians[1]
  # Without a floor nothing is paired (the forward steps): one timed call
  # per step and round, no ratios.
  clock[0] = 0
  medians, ratios = run.timed_round_robin(steps, 3, 'train')
  assert ratios is None and clock[0] == 2 * 4 * len(steps)


def test_instruction_peer_batch_holds_the_same_answers_on_both_sides():
  """Ours (packed rows, gathered answer positions) and PEFT's (one example
  per row, left-padded to the longest, logits_to_keep) train on the same
  answer tokens of the same E2E rows."""
  import numpy as np
  from benchmarks import peer
  from ntk_prefix import checkpoints
  ours, theirs = peer.instruction_batch(checkpoints.default_decoder_path(),
                                        4, 96)
  assert len(ours['input_ids']) < 4  # packed
  assert theirs['attention_mask'].sum(1).max() == theirs['input_ids'].shape[1]
  examples = lambda rows: sorted(map(tuple, rows))
  assert examples(ids[seg == k] for ids, seg in zip(
      ours['input_ids'], ours['segment_ids'])
                  for k in range(1, seg.max() + 1)) == examples(
      ids[m > 0] for ids, m in zip(theirs['input_ids'],
                                   theirs['attention_mask']))
  # Each example's answer, in order, is what each side trains on.
  keep = theirs['keep']
  ours_answers = []
  for r in range(len(ours['input_ids'])):
    real = ours['loss_weights'][r] > 0
    segment = ours['segment_ids'][r][ours['loss_positions'][r][real] + 1]
    targets = ours['loss_targets'][r][real]
    ours_answers += [tuple(targets[segment == k]) for k in np.unique(segment)]
  theirs_answers = [tuple(ids[m > 0]) for ids, m in zip(
      theirs['input_ids'][:, -keep + 1:], theirs['loss_mask'][:, -keep + 1:])]
  assert all(len(a) > 0 for a in theirs_answers)
  assert sorted(ours_answers) == sorted(theirs_answers)


def test_attention_cost_accounts_for_each_case(tmp_path):
  """XLA's bytes and FLOPs of one attention layer per case: an extra term
  or a longer prefix costs more than the keys alone, and the files hold the
  printed table."""
  from benchmarks import attention_cost
  tables = attention_cost.main(['--batch=2', '--seq_len=16',
                                '--prefix_lengths=4,64', f'--out={tmp_path}'])
  for rows in tables.values():
    frozen, ntk, short, long = rows
    assert frozen['grad_bytes_ratio'] == 1.0
    assert ntk['grad_flops'] > frozen['grad_flops']
    assert long['grad_bytes'] > short['grad_bytes'] > frozen['grad_bytes']
    assert all(r['grad_bytes'] > r['forward_bytes'] for r in rows)
  text = (tmp_path / 'attention_cost.md').read_text()
  assert '| ntk_attention |' in text and '### smollm2' in text
  saved = json.loads((tmp_path / 'attention_cost.json').read_text())
  assert saved['tables']['minilm'][3]['case'] == 'explicit prefix m=64'


def test_decode_speed_reports_every_method(hf_checkpoint, tmp_path):
  from benchmarks import decode_speed
  decoder, _ = hf_checkpoint('llama')
  rows = decode_speed.main([f'--model={decoder}', '--batch=2',
                            '--prompt_len=5', '--new_tokens=3',
                            '--repeats=1', f'--out={tmp_path}'])
  assert [r['method'] for r in rows] == list(decode_speed.METHODS)
  for r in rows:
    assert r['step_seconds'] > 0 and r['prefill_seconds'] > 0
    assert r['tokens_per_s'] == pytest.approx(2 / r['step_seconds'])
    assert r['step_bytes_xla'] > 0
  text = (tmp_path / 'decode_speed.md').read_text()
  assert '| ntk_attention |' in text and 'tokens/s' in text


def test_precision_benchmark_prints_every_kind(tmp_path):
  from benchmarks import precision
  rates, steps = precision.main(['--methods=', '--shapes=16,24,32;8,8,8',
                                 '--repeats=1', f'--out={tmp_path}'])
  assert [r['shape'] for r in rates] == [[16, 24, 32], [8, 8, 8]]
  for r in rates:
    assert all(r[kind] > 0 for kind, _, _ in precision.KINDS)
  assert steps == []
  text = (tmp_path / 'precision.md').read_text()
  assert '| 16 x 24 x 32 |' in text and 'bf16 instructions' in text


def test_profile_names_the_kernels_a_method_adds(hf_checkpoint, capsys):
  """NTK-Attention's own kernels (its state's einsum) appear only on its
  side of the profile, each kernel under the model code that made it."""
  from benchmarks import profile
  decoder, _ = hf_checkpoint('llama')
  times = profile.main([f'--model={decoder}', '--batch=2', '--seq_len=8',
                        '--steps=1', '--top=200'])
  frozen, ntk = times['frozen'], times['ntk_attention']
  assert sum(frozen.values()) > 0
  # phi(q) times the state (b: one copy per row, as training builds it).
  state_rows = [k for k in ntk if re.search(r'bhgqr,b?hgrd->bhgqd', k[1])]
  assert state_rows and not [k for k in frozen if k in state_rows]
  # Layers fold into one row; most kernel time is named by its op.
  assert not [op for _, op in ntk if re.search(r'layer_\d', op)]
  named = sum(t for (_, op), t in ntk.items() if op != '(no metadata)')
  assert named > 0.5 * sum(ntk.values())
  assert 'ntk_attention (ms)' in capsys.readouterr().out


def test_peer_sweep_at_both_precisions(hf_checkpoint):
  """At bfloat16 PEFT is timed in both of its modes and the faster is the
  peer; ours trains in bf16 weights as the tables do; every group renders."""
  pytest.importorskip('peft')
  import jax.numpy as jnp
  from benchmarks import peer, report
  from ntk_prefix import checkpoints
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  rows = peer.sweep_peer(path, 2, 96, 1, {'float32': 1e9, 'bfloat16': 4e9},
                         methods=('lora',))
  groups = {(r['peer_batch'], r['precision']) for r in rows}
  assert groups == {(k, p) for k in ('all_tokens', 'instruction')
                    for p in peer.PRECISIONS}
  for kind, precision in groups:
    ours, theirs = [r for r in rows if (r['peer_batch'], r['precision']) ==
                    (kind, precision)]
    assert 'peer' not in ours and theirs['peer'] == 'peft'
    modes = theirs['peft_mode_seconds']
    assert set(modes) == {m for m, _, _ in peer.PEFT_MODES[precision]}
    assert theirs['step_seconds'] == min(modes.values()) == modes[
        theirs['peft_mode']]
    assert ours['ratio_to_peer'] == pytest.approx(
        ours['step_seconds'] / theirs['step_seconds'])
    assert ours['floor_rate'] == {'float32': 1e9, 'bfloat16': 4e9}[precision]
    # Same real tokens both sides; on E2E rows ours are packed (fewer rows)
    # and PEFT's padded only to the longest row.
    assert ours['tokens'] == theirs['tokens']
    if kind == 'instruction':
      assert ours['shape'][0] <= theirs['shape'][0] == 2
  text = report.peer_table(rows)
  assert text.count('### ') == 4 and '`instruction`, bfloat16' in text
  assert 'bf16 autocast' in text and 'bf16 weights' in text
  frozen = {'w': jnp.ones(2), 'i': jnp.ones(2, jnp.int32)}
  cast = harness.as_dtype(frozen, 'bfloat16')
  assert cast['w'].dtype == jnp.bfloat16 and cast['i'].dtype == jnp.int32


def test_unknown_peer_precision_is_refused_before_any_work(tmp_path):
  with pytest.raises(SystemExit, match=r'--peer_precisions: fp16 .*float32,'
                     r'bfloat16'):
    run.main(['--sweeps=peer', '--peer_precisions=float32,fp16',
              f'--out={tmp_path}'])
  assert not list(tmp_path.iterdir())
