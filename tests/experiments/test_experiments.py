"""The experiment commands end to end on tiny models, and their scoring."""
import json
import os

import numpy as np
import pytest

from conftest import REPO
from experiments import (common, lm, nlu, ntk_init, redraw, render, search,
                         scoring)


def test_gsm8k_answers_are_read_like_the_dataset_writes_them():
  assert scoring.gsm8k_number('so 3 + 4 = 7\n#### 1,000.') == '1000'
  assert scoring.gsm8k_number('#### -2.50') == '-2.5'
  assert scoring.gsm8k_number('no marker, 12 apples') is None
  assert scoring.last_number('it is 12 then 13 apples.\nQuestion: 99?') == '13'
  gold = [['... #### 7'], ['... #### 10']]
  scores = scoring.score_gsm8k(['#### 7', 'I think 10.\nQuestion: 5'], gold)
  assert scores == {'exact_match': 0.5, 'lenient_match': 1.0}


def test_e2e_bleu_uses_every_reference():
  refs = [['The Mill is a pub.', 'There is a pub called The Mill.'],
          ['Aromi serves French food.']]
  # Each hypothesis equals one of its references: BLEU is 100.
  hyp = ['There is a pub called The Mill.\nmore text',
         'Aromi serves French food.']
  assert scoring.score_e2e(hyp, refs)['bleu'] == pytest.approx(1.0)
  worse = scoring.score_e2e(['The Mill.', 'Aromi serves food.'], refs)['bleu']
  assert 0.0 <= worse < 0.7


def test_runs_from_uncommitted_code_are_marked_in_the_table():
  results = {'tasks': {'cb': {'records': [
      {'commits': ['abc1234']}, {'commits': ['abc1234', 'def5678+changes']}]}}}
  text = render.run_commits(results)
  assert 'Runs trained at: abc1234, def5678+changes.' in text
  assert 'def5678+changes trained in a checkout with uncommitted' in text
  assert 'uncommitted' not in render.run_commits(
      {'tasks': {'cb': {'records': [{'commits': ['abc1234']}]}}})


def test_mean_std_is_the_sample_std():
  m, s = render.mean_std([70.0, 72.0, 77.0])
  assert m == pytest.approx(73.0)
  assert s == pytest.approx(np.std([70, 72, 77], ddof=1))
  assert render.mean_std([5.0]) == (5.0, 0.0)


def test_a_rate_chosen_at_the_end_of_its_grid_is_marked():
  record = lambda chosen, lrs: {
      'chosen': {'optimizer.lr': chosen},
      'search': [{'overrides': {'optimizer.lr': lr}} for lr in lrs]}
  assert render.grid_edge(record(1e-2, [1e-3, 3e-3, 1e-2])) == ' (grid top)'
  assert render.grid_edge(record(1e-3, [1e-3, 3e-3, 1e-2])) == \
      ' (grid bottom)'
  assert render.grid_edge(record(3e-3, [1e-3, 3e-3, 1e-2])) == ''
  assert render.grid_edge({'chosen': {}, 'search': []}) == ''  # not searched
  # Records of the extending search carry their own verdict.
  assert render.grid_edge({**record(1e-2, [1e-3, 1e-2]), 'edge': ''}) == ''
  assert render.grid_edge({**record(1e-2, [1e-3, 1e-2]),
                           'edge': 'top'}) == ' (edge)'


def _peaked(peak):
  """A held-out score that is best at lr = peak (log scale)."""
  return lambda p: -abs(np.log10(p['optimizer.lr']) - np.log10(peak))


def test_search_extends_outward_until_the_best_is_inside():
  points, values, edge = search.search_outward(
      [{'optimizer.lr': 1e-3}, {'optimizer.lr': 3e-3}], _peaked(0.1),
      higher_is_better=True)
  assert [p['optimizer.lr'] for p in points] == [1e-3, 3e-3, 1e-2, 3e-2, 0.1,
                                                 0.3]
  assert edge == ''  # 0.1 is inside [1e-3, 0.3]
  # Downward, for a loss (lower is better), other overrides carried along.
  grid = [{'optimizer.lr': 1e-2, 'x': 1}, {'optimizer.lr': 3e-2, 'x': 1}]
  points, _, edge = search.search_outward(
      grid, lambda p: np.log10(p['optimizer.lr']), higher_is_better=False,
      max_extra=2)
  assert [p['optimizer.lr'] for p in points] == [1e-2, 3e-2, 3e-3, 1e-3]
  assert all(p['x'] == 1 for p in points)
  assert edge == 'bottom'  # still at the end after the cap
  # Best inside from the start: nothing more is run.
  points, _, edge = search.search_outward(
      [{'optimizer.lr': v} for v in (1e-3, 3e-3, 1e-2)], _peaked(3e-3),
      higher_is_better=True)
  assert len(points) == 3 and edge == ''
  # A flat curve stops once an interior point ties with the end.
  points, _, edge = search.search_outward(
      [{'optimizer.lr': 1e-3}, {'optimizer.lr': 3e-3}], lambda p: 0.5,
      higher_is_better=True)
  assert len(points) == 3 and edge == ''


def test_only_the_chosen_point_is_scored(monkeypatch):
  """The reported score (a generation table's decode, minutes a run) is
  taken of the chosen rate's runs alone: the search reads held-out rows."""
  held_out = {1e-3: 0.6, 3e-3: 0.8, 1e-2: 0.7}

  def fake_run(spec, root, method, point, seed, base, ledger=None):
    lr = point['optimizer.lr']
    return f'{lr},{seed}', {'eval_accuracy': held_out[lr],
                            'wall_seconds': 1.0, 'trainable_params': 5}

  monkeypatch.setattr(common, 'run_seed', fake_run)
  scored = []

  def score(workdir, metrics):
    scored.append(workdir)
    return {'test_accuracy': 0.5}

  record = common.tune_and_repeat(
      'spec', 'm', [{'optimizer.lr': 1e-3}, {'optimizer.lr': 3e-3},
                    {'optimizer.lr': 1e-2}], 3, 'root',
      select='eval_accuracy', higher_is_better=True, score=score,
      log=lambda s: None)
  assert record['chosen'] == {'optimizer.lr': 3e-3}
  assert scored == ['0.003,0', '0.003,1', '0.003,2']
  assert [len(r['scores']) for r in record['runs']] == [1, 1, 1]


def test_ntk_init_compares_each_init_at_its_own_best_rate(monkeypatch):
  """An init whose best held-out loss sits at the top of --lrs is trained
  one rate further, the others are not; the table says which rates ran."""
  best_lr = {'zeros': 1e-2, 'normal 0.01': 1.0}  # normal keeps improving
  def fake_run(spec, root, method, point, seed, base, ledger=None):
    label = 'zeros' if point.get('method.ntk_attention.init') == 'zeros' \
        else 'normal 0.01' if 'method.ntk_attention.init' in point else method
    lr = point['optimizer.lr']
    loss = 1.0 + abs(np.log10(lr / best_lr.get(label, 3e-3)))
    return 'w', {'eval_loss': loss, 'eval_accuracy': 0.5,
                 'commit': 'abc1234' if seed else 'def5678'}

  monkeypatch.setattr(common, 'run_seed', fake_run)
  monkeypatch.setattr(common, 'configured', lambda spec, base: _FakeConfig)
  monkeypatch.setattr(ntk_init, 'initial_losses',
                      lambda config, inits: dict.fromkeys(
                          list(inits) + ['frozen'], 2.0))
  monkeypatch.setattr(ntk_init.init_loss, 'table_for', lambda task: lm)
  result = ntk_init.measure('e2e_nlg', [3e-3, 1e-2, 3e-2], {}, 'work',
                            seeds=3)
  normal = result['rows']['normal 0.01']
  # The best rate is repeated at the other seeds (this fake: seed-blind).
  assert normal['seeds'] == [1.0, 1.0, 1.0]
  assert sorted(normal['trained']) == [3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
  assert normal['best_lr'] == 1.0 and normal['edge'] == ''
  assert sorted(result['rows']['zeros']['trained']) == [3e-3, 1e-2, 3e-2]
  assert result['rows']['zeros']['best_lr'] == 1e-2
  text = ntk_init.render(result, {'command': 'c', 'commit': 'x',
                                  'date': 'd'})
  zeros_line = next(line for line in text.splitlines()
                    if line.startswith('| zeros'))
  # not run for zeros: 1e-3 (the official inits' extension) and 0.1 .. 3
  assert zeros_line.count('—') == 5
  assert '1.000 (lr=1)' in text
  assert 'Runs trained at: abc1234, def5678.' in text
  assert '1.000 ± 0.000 (1.000 / 1.000 / 1.000)' in zeros_line


class _FakeConfig:
  class task:  # pylint: disable=invalid-name
    eval_split = 'train[-200:]'
  total_steps, batch_size = 60, 8


@pytest.fixture(scope='module')
def tiny_encoder(tmp_path_factory):
  import transformers
  from conftest import make_hf_model
  from ntk_prefix import checkpoints
  path = str(tmp_path_factory.mktemp('tiny_bert'))
  make_hf_model('bert', vocab_size=30522, num_labels=3).save_pretrained(path)
  transformers.AutoTokenizer.from_pretrained(
      checkpoints.default_encoder_path()).save_pretrained(path)
  return path


def test_nlu_table_command(tiny_encoder, tmp_path, command, monkeypatch):
  """Search on held-out rows, seeds at the chosen rate, results folder with
  command and commit; a rerun trains nothing; redraw rebuilds the files."""
  # A ledger keeps no run of uncommitted code: these runs are a commit's,
  # whatever this checkout holds.
  from ntk_prefix import provenance
  monkeypatch.setattr(provenance, 'process_commit', lambda: 'abc1234')
  out, work = tmp_path / 'out', tmp_path / 'runs'
  argv = ['--tasks=cb', '--methods=none,ntk_attention', '--seeds=2',
          f'--out={out}', f'--workdir={work}',
          '--config=configs/nlu.py', f'--config.model.path={tiny_encoder}',
          f'--config.task.prepared_dir={tmp_path / "tfds"}',
          '--config.total_steps=3', '--config.batch_size=8',
          '--config.eval_batch_size=32', '--config.task.max_length=32']
  command(nlu, argv)
  results = json.loads((out / 'results.json').read_text())
  assert results['commit'] and results['date']
  assert 'experiments.nlu' in results['command']
  records = results['tasks']['cb']['records']
  assert [r['method'] for r in records] == ['none', 'ntk_attention']
  for r in records:
    assert 2 <= len(r['search']) <= 2 + search.MAX_EXTRA_POINTS
    assert len(r['runs']) == 2 and r['runs_spent'] == len(r['search']) + 1
    held_out = [p['select'] for p in r['search']]
    assert r['chosen'] == r['search'][int(np.argmax(held_out))]['overrides']
    lrs = sorted(p['overrides']['optimizer.lr'] for p in r['search'])
    best = max(held_out)
    inside = [p for p in r['search'] if p['select'] == best and
              lrs[0] < p['overrides']['optimizer.lr'] < lrs[-1]]
    assert bool(inside) == (r['edge'] == '')
    for run in r['runs']:  # a whole number of the 56 CB dev rows
      correct = run['scores']['test_accuracy'] * 56
      assert abs(correct - round(correct)) < 1e-6, correct
  # The reported metric is the dev set (56 CB rows), never the held-out rows.
  final = next(work.rglob('final_metrics.json'))
  metrics = json.loads(final.read_text())
  assert {'eval_accuracy', 'test_accuracy'} <= set(metrics)
  table = (out / 'table.md').read_text()
  assert 'CB' in table and 'ntk_attention' in table
  # The floor the table is read against: always the most common dev label,
  # counted here from the original file.
  from ntk_prefix import config as config_lib
  with open(os.path.join(config_lib.default_manual_dir(),
                         'superglue/CB/val.jsonl')) as f:
    labels = [json.loads(line)['label'] for line in f if line.strip()]
  top = max(labels.count(v) for v in set(labels)) / len(labels)
  assert results['tasks']['cb']['majority'] == pytest.approx(top)
  assert f'majority class {100 * top:.1f}%' in table
  assert (out / 'metric_vs_params.png').stat().st_size > 1000

  mtimes = {p: p.stat().st_mtime for p in work.rglob('final_metrics.json')}
  assert len(mtimes) == sum(r['runs_spent'] for r in records)
  command(nlu, argv)
  assert {p: p.stat().st_mtime for p in work.rglob('final_metrics.json')} == \
      mtimes
  # The rerun restamps results.json (its time may fall in a later minute), so
  # redraw is compared with the table that rerun wrote.
  table = (out / 'table.md').read_text()
  # A run folder belongs to one config: another one there is an error.
  from ntk_prefix import sweep
  one = next(work.rglob('config.json')).parent
  changed = common.configured(f'{nlu.CONFIG}:cb', {
      **dict(a[len('--config.'):].split('=', 1) for a in argv[6:]),
      'total_steps': 4})
  with pytest.raises(ValueError, match='another config'):
    sweep.run_point(changed, str(one))
  (out / 'table.md').unlink()
  (out / 'metric_vs_params.png').unlink()
  redraw.main(['redraw', str(out)])
  assert (out / 'table.md').read_text() == table
  assert (out / 'metric_vs_params.png').exists()
  # A fresh clone on another machine: the run folders are gone, the ledger
  # committed with the results lists every finished run and its scores, so
  # the table comes back the same and nothing trains.
  assert len((out / 'runs.jsonl').read_text().splitlines()) == len(mtimes)
  work.rename(tmp_path / 'elsewhere')
  command(nlu, argv)
  assert not work.exists() or not list(work.rglob('final_metrics.json'))
  again = json.loads((out / 'results.json').read_text())
  assert again['tasks'] == results['tasks']


def test_lm_table_command(hf_checkpoint, tmp_path, command, prepared_dir,
                          monkeypatch):
  """Train, decode the fixed test subset with each run's state, BLEU; on a
  fresh clone the ledger gives every row back, nothing trained or decoded."""
  from ntk_prefix import checkpoints, provenance
  monkeypatch.setattr(provenance, 'process_commit', lambda: 'abc1234')
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  out, work = tmp_path / 'out', tmp_path / 'runs'
  argv = [
      '--task=e2e_nlg', '--methods=none,p_tuning_v2', '--seeds=1',
      f'--out={out}', f'--workdir={work}', '--config=configs/lm.py',
      f'--config.model.path={path}',
      f'--config.task.prepared_dir={prepared_dir}',
      '--config.total_steps=2', '--config.batch_size=8',
      '--config.task.max_length=64', '--config.decode.rows=3',
      '--config.decode.max_new_tokens=4',
      # One held-out batch, not the table's 200 rows (25 of 8).
      '--config.task.eval_limit=16', '--config.eval_batch_size=16']
  command(lm, argv)
  results = json.loads((out / 'results.json').read_text())
  records = results['tasks']['e2e_nlg']['records']
  assert [r['method'] for r in records] == ['none', 'p_tuning_v2']
  assert records[0]['trainable_params'] == 0
  assert records[1]['trainable_params'] > 0
  for r in records:
    # Wall times are read beside the device that took them.
    assert r['runs'][0]['device'] == 'cpu'
  assert 'Runs ran on: cpu' in (out / 'table.md').read_text()
  # configs/lm.py trains in bf16, and the table says so.
  assert 'Frozen weights in bfloat16' in (out / 'table.md').read_text()
  lines = [json.loads(l) for l in
           next(work.rglob('completions.jsonl')).read_text().splitlines()]
  assert len(lines) == 3
  # E2E rows are grouped by meaning representation: several references.
  assert all(l['prompt'].startswith('Table: ') for l in lines)
  assert max(len(l['references']) for l in lines) > 1
  # The stored BLEU is the completions' BLEU, and the scorer gives 1 to a
  # completion that is one of its references.
  run = next(r for r in records if r['method'] == 'p_tuning_v2')['runs'][0]
  folder = next(p for p in work.rglob('completions.jsonl')
                if 'p_tuning_v2' in str(p))
  rows = [json.loads(l) for l in folder.read_text().splitlines()]
  assert scoring.score_e2e([l['completion'] for l in rows],
                      [l['references'] for l in rows]) == {
                          'bleu': run['scores']['bleu']}
  refs = [l['references'] for l in rows]
  assert scoring.score_e2e([r[0] for r in refs], refs)['bleu'] == pytest.approx(1.0)
  # Beside BLEU, each row shows its held-out token loss at the chosen point
  # (the run's own final eval loss), the frozen model its own.
  final = json.loads((folder.parent / 'final_metrics.json').read_text())
  assert run['select'] == final['eval_loss']
  table = (out / 'table.md').read_text()
  assert 'held-out token loss at the chosen point' in table
  row = next(l for l in table.splitlines() if l.startswith('| p_tuning_v2 '))
  assert f"{final['eval_loss']:.3f} (1 run)" in row
  from experiments import held_out
  config = common.configured('configs/lm.py:e2e_nlg', {
      'model.path': path, 'task.prepared_dir': str(prepared_dir),
      'task.max_length': 64, 'method.name': 'none', 'task.eval_limit': 16,
      'eval_batch_size': 16})
  frozen_loss = held_out.initial_losses(config, ['none'], 1)['none'][0]
  assert records[0]['runs'][0]['select'] == pytest.approx(frozen_loss)
  work.rename(tmp_path / 'elsewhere')  # a fresh clone: only the ledger
  def refuse(*args, **kwargs):
    raise AssertionError('decoded or trained again')
  monkeypatch.setattr(lm, 'decode', refuse)
  monkeypatch.setattr(held_out, 'initial_losses', refuse)
  monkeypatch.setattr(common, 'run_point', refuse)
  command(lm, argv)
  again = json.loads((out / 'results.json').read_text())
  assert again['tasks'] == results['tasks']


def test_init_loss_command(hf_checkpoint, tmp_path, command, prepared_dir):
  """Methods that start at the identity start at the frozen model's loss."""
  from experiments import held_out, init_loss
  from ntk_prefix import checkpoints
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  out = tmp_path / 'init_loss.md'
  # float32: the ChatGLM preset's N(0, 1e-4) state moves this model's loss
  # by about 1e-6, below what bf16 activations resolve.
  config = common.configured('configs/lm.py:e2e_nlg', {
      'model.path': str(path), 'task.prepared_dir': prepared_dir,
      'task.max_length': '64', 'task.eval_split': 'train[-16:]',
      'model.dtype': 'float32'})
  losses = held_out.initial_losses(
      config, ['none', 'lora', 'full', 'iapt', 'ntk_attention:official_vit',
               'ntk_attention:official_glm', 'ntk_attention'], seeds=2)
  assert config.method.name == 'ntk_attention'  # the caller's config is kept
  frozen = losses['none'][0]
  assert len(losses['none']) == 1 and len(losses['iapt']) == 2
  assert losses['lora'] == pytest.approx([frozen] * 2, rel=1e-6)
  assert losses['full'] == pytest.approx([frozen] * 2, rel=1e-6)
  assert abs(losses['iapt'][0] - frozen) > 1e-4  # tokens enter attention
  # A preset is a row of its own: official_vit starts at Z = k = 0.
  assert losses['ntk_attention:official_vit'] == pytest.approx([frozen] * 2,
                                                               rel=1e-6)
  # The default (Z = k = 0) starts there too; the ChatGLM preset's
  # N(0, 1e-4) state does not.
  assert losses['ntk_attention'] == pytest.approx([frozen] * 2, rel=1e-6)
  assert abs(losses['ntk_attention:official_glm'][0] - frozen) > 1e-6
  command(init_loss, [
      '--methods=none,lora', '--seeds=1', f'--out={out}',
      '--config=configs/lm.py', f'--config.model.path={path}',
      f'--config.task.prepared_dir={tmp_path / "tfds"}',
      '--config.task.max_length=64', '--config.task.eval_split=train[-16:]'])
  text = out.read_text()
  assert 'python -m experiments.init_loss --methods=none,lora' in text
  assert '| lora |' in text and '+0.000 |' in text


class TinyImagesForTest:  # defined lazily: tfds registers builders by name
  pass


def _tiny_tfds_images(data_dir: str) -> str:
  """A 3-class image set prepared by tfds as array_record. Real image sets
  (cifar100, food101) use an Image feature, whose *encoding* needs
  TensorFlow; reading decodes with PIL, into the same uint8 arrays."""
  import tensorflow_datasets as tfds
  global TinyImagesForTest
  if not isinstance(TinyImagesForTest, type) or \
      not issubclass(TinyImagesForTest, tfds.core.GeneratorBasedBuilder):
    class TinyImagesForTest(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.
                                     FeaturesDict({
            'image': tfds.features.Tensor(shape=(12, 12, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=3)}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(48, 0),
                'test': self._generate_examples(16, 1)}

      def _generate_examples(self, n, seed):
        rng = np.random.RandomState(seed)
        for i in range(n):
          label = i % 3  # the class sets the mean brightness: learnable
          img = rng.randint(0, 60, (12, 12, 3)) + 90 * label
          yield i, {'image': img.astype(np.uint8), 'label': label}
  TinyImagesForTest(data_dir=data_dir,
                    file_format='array_record').download_and_prepare()
  return 'tfds:tiny_images_for_test'


def test_any_prepared_tfds_image_set_trains_a_vit(hf_checkpoint, tmp_path):
  from ntk_prefix import config as config_lib, train
  from ntk_prefix.build import build
  from ntk_prefix.data import batches, pipeline
  path, _ = hf_checkpoint('vit')
  name = _tiny_tfds_images(str(tmp_path / 'tfds'))
  ds = pipeline.load(name, 'train[:-8]', None, manual_dir='',
                     data_dir=str(tmp_path / 'tfds'), max_length=0,
                     truncate=True, image_size=30)
  assert len(ds) == 40 and ds.num_labels == 3
  batch = batches.train_batch(ds, 0, 8, seed=0)
  assert batch['pixel_values'].shape == (8, 3, 30, 30)
  assert batch['pixel_values'].min() >= -1 and batch['pixel_values'].max() <= 1
  assert set(batch['labels']) <= {0, 1, 2}
  # Gray 128 is 0.0039 after ViT's (x / 255 - 0.5) / 0.5.
  gray = pipeline.image_pixels(np.full((4, 4, 3), 128, np.uint8), 8)
  assert gray.shape == (3, 8, 8)
  np.testing.assert_allclose(gray, (128 / 255 - 0.5) / 0.5, atol=1e-6)

  c = config_lib.get_config(os.path.join(REPO, 'configs/vision.py:' + name))
  for key, value in {'model.path': path, 'task.prepared_dir':
                     str(tmp_path / 'tfds'), 'task.train_split': 'train[:-8]',
                     'task.eval_split': 'train[-8:]', 'batch_size': 8,
                     'eval_batch_size': 8, 'total_steps': 3}.items():
    config_lib.override(c, key, value)
  metrics = train.train_and_evaluate(c, str(tmp_path / 'run'))
  correct = metrics['test_accuracy'] * 16  # of the 16 test images
  assert abs(correct - round(correct)) < 1e-6, correct
  assert np.isfinite(metrics['eval_loss'])
  assert metrics['eval_loss'] == json.loads(
      (tmp_path / 'run' / 'final_metrics.json').read_text())['eval_loss']

  config_lib.override(c, 'task.name', 'tfds:not_prepared_here')
  with pytest.raises(Exception, match='not_prepared_here'):
    build(c)


def test_readme_results_are_the_results_folders():
  """Every number in the README's results block comes from a results
  folder: the block equals what `python -m experiments.readme` writes."""
  from experiments import readme
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  current = text.split(readme.BEGIN, 1)[1].split(readme.END, 1)[0]
  assert readme.BEGIN + current + readme.END == readme.block()


def test_redraw_reproduces_every_committed_table(tmp_path):
  """The committed tables are what their results.json renders to."""
  import shutil
  root = os.path.join(REPO, 'experiments', 'results')
  for name in os.listdir(root):
    src = os.path.join(root, name)
    if not os.path.exists(os.path.join(src, 'results.json')):
      continue
    shutil.copy(os.path.join(src, 'results.json'), tmp_path / 'results.json')
    with open(os.path.join(src, 'table.md')) as f:
      assert redraw.redraw(str(tmp_path)) == f.read(), name


def test_prefix_length_command(tiny_encoder, tmp_path, command,
                               monkeypatch):
  """Every prefix length for both prefix methods, the reference rows, the
  cost columns, the compressed point, and the figure; on a fresh clone the
  ledger gives it all back, compressed points included."""
  from experiments import prefix_length
  from ntk_prefix import provenance  # a ledger keeps runs of a commit only
  monkeypatch.setattr(provenance, 'process_commit', lambda: 'abc1234')
  out, work = tmp_path / 'out', tmp_path / 'runs'
  argv = [
      '--task=cb', '--lengths=1,4', '--seeds=2', '--max_extra=0',
      '--compress_steps=20', f'--out={out}', f'--workdir={work}',
      '--config=configs/nlu.py', f'--config.model.path={tiny_encoder}',
      f'--config.task.prepared_dir={tmp_path / "tfds"}',
      '--config.total_steps=2', '--config.batch_size=8',
      '--config.eval_batch_size=32', '--config.task.max_length=32']
  command(prefix_length, argv)
  results = json.loads((out / 'results.json').read_text())
  rows = [(r['method'], r['prefix_length']) for r in results['records']]
  assert set(prefix_length.PREFIX_METHODS) == {'p_tuning_v2',
                                               'prefix_tuning'}
  assert rows == [(m, length) for m in prefix_length.PREFIX_METHODS
                  for length in (1, 4)] + [
                      ('ntk_attention', None), ('lora', None), ('full', None),
                      ('none', None)]
  for r in results['records']:
    assert len(r['runs']) == 2
    if r['method'] != 'none':
      assert r['cost']['step_seconds'] > 0 and r['cost']['peak_bytes'] > 0
  # Longer explicit prefixes hold more: XLA's peak grows with m.
  peaks = {(r['method'], r['prefix_length']): r['cost']['peak_bytes']
           for r in results['records'] if r['cost']}
  assert peaks[('p_tuning_v2', 4)] >= peaks[('p_tuning_v2', 1)]
  # Each prefix method's largest-m runs, compressed into NTK-Attention.
  assert [c['source'] for c in results['compressed']] == list(
      prefix_length.PREFIX_METHODS)
  for comp in results['compressed']:
    assert comp['into'] == 'ntk_attention'
    assert comp['prefix_length'] == 4 and len(comp['runs']) == 2
    for run in comp['runs']:
      correct = run['scores']['test_accuracy'] * 56  # CB's dev rows
      assert abs(correct - round(correct)) < 1e-6
  table = (out / 'table.md').read_text()
  assert '| ntk_attention | ∞ |' in table and 'compressed' in table
  assert (out / 'prefix_length.png').stat().st_size > 10000
  work.rename(tmp_path / 'elsewhere')  # the run folders are gone
  command(prefix_length, argv)
  assert not list(work.rglob('final_metrics.json'))
  assert not list(work.rglob('compress.json'))
  again = json.loads((out / 'results.json').read_text())
  assert again['compressed'] == results['compressed']
  assert [r['runs'] for r in again['records']] == [
      r['runs'] for r in results['records']]


def test_prefix_length_command_on_a_decoder(hf_checkpoint, tmp_path, command,
                                           prepared_dir):
  """The generation version (--task=e2e_nlg): trained rows and the
  compressed point are decoded and scored with BLEU, the frozen model is
  decoded untrained. Three rows (--methods) are enough: the others run the
  same code as in the encoder's test."""
  from ntk_prefix import checkpoints
  from experiments import prefix_length
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  out, work = tmp_path / 'out', tmp_path / 'runs'
  command(prefix_length, [
      '--task=e2e_nlg', '--lengths=2', '--seeds=1', '--max_extra=0',
      '--methods=p_tuning_v2,ntk_attention,none',
      '--compress_steps=5', f'--out={out}', f'--workdir={work}',
      '--config=configs/lm.py', f'--config.model.path={path}',
      f'--config.task.prepared_dir={prepared_dir}',
      '--config.total_steps=2', '--config.batch_size=8',
      '--config.task.max_length=64', '--config.decode.rows=2',
      '--config.decode.max_new_tokens=3',
      '--config.task.eval_limit=16', '--config.eval_batch_size=16'])
  results = json.loads((out / 'results.json').read_text())
  assert [r['method'] for r in results['records']] == [
      'p_tuning_v2', 'ntk_attention', 'none']
  for r in results['records']:
    assert 0.0 <= r['runs'][0]['scores']['bleu'] <= 1.0, r['method']
  assert [c['source'] for c in results['compressed']] == ['p_tuning_v2']
  for comp in results['compressed']:
    assert 0.0 <= comp['runs'][0]['scores']['bleu'] <= 1.0
  assert (out / 'prefix_length.png').stat().st_size > 10000


def test_edge_marks_only_choices_at_the_cap():
  """`(edge)` (and the retired grid marks) appear in a committed table only
  in a row whose chosen rate is still at an end of what was searched, never
  in prose: a reader greps a table for it to find the choices to distrust."""
  root = os.path.join(REPO, 'experiments', 'results')
  for name in os.listdir(root):
    path = os.path.join(root, name, 'table.md')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      for line in f:
        marked = [c for c in line.split('|')
                  if any(m in c for m in ('(edge)', 'grid top', 'grid bottom'))]
        if marked:
          assert line.startswith('|'), (name, line[:120])
          assert all(c.strip().startswith('lr=') for c in marked), (
              name, line[:120])
