"""One file makes a method: tests/methods/toy_method.py, named in $NTK_PREFIX_METHODS
and edited nowhere else, appears in the method listing, the configs, the
benchmark's method sweep, the parametrised method tests, and export/load."""
import os
import subprocess
import sys

from conftest import REPO

TESTS = os.path.join(REPO, 'tests', 'methods')


def _env():
  env = dict(os.environ, NTK_PREFIX_METHODS='toy_method')
  env['PYTHONPATH'] = os.pathsep.join([TESTS, REPO, env.get('PYTHONPATH', '')])
  return env


def _run(*args, timeout=900):
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


CHECK = r'''
import tempfile
import jax, numpy as np
from ntk_prefix import config, export, methods, models
from ntk_prefix.config import load_file
from benchmarks import run
assert 'toy_gate' in methods.NAMES and 'toy_gate' in run.METHODS
for f in ('nlu', 'lm', 'vision'):
  m = load_file(f'configs/{f}.py')
  assert 'toy_gate' in m.METHODS and m.LR_GRID['toy_gate'], f
  space = m.get_search_space()
  assert space['toy_gate'], f
c = config.base_config()
assert c.method.toy_gate.width == 4
c.method.name = 'toy_gate'
config.validate(c)
cfg = models.ModelConfig(family='bert', hidden_size=16, num_layers=2,
                         num_heads=2, num_kv_heads=2, head_dim=8,
                         intermediate_size=32, max_positions=32,
                         vocab_size=40)
method = methods.get('toy_gate', cfg)
params = method.init(jax.random.PRNGKey(0))
params = jax.tree.map(lambda x: x + 0.1, params)
d = tempfile.mkdtemp()
export.save(d, method, params)
again, loaded = export.load(d, cfg)
assert again.name == 'toy_gate'
for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
  np.testing.assert_array_equal(a, b)
print('plugin ok')
'''


def test_toy_method_is_everywhere_with_one_file():
  assert 'plugin ok' in _run('-c', CHECK)
  listing = _run('-m', 'ntk_prefix.methods', '--model=minilm')
  assert '| toy_gate |' in listing
  # The parametrised method and decoding tests pick it up and pass for it.
  out = _run('-m', 'pytest', '-q', '-p', 'no:cacheprovider',
             'tests/methods/test_methods.py', 'tests/test_generate.py', '-k',
             'toy_gate')
  assert ' passed' in out and 'failed' not in out, out[-2000:]
  collected = int(out.strip().splitlines()[-1].split(' passed')[0].split()[-1])
  assert collected >= 5, out[-2000:]
