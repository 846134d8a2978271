"""The device check runs end to end on CPU (tiny shapes), so the one call on
a GPU machine does not fail on a typo; and setup.py admits current JAX on
the Python versions that have it."""
import json
import os
import subprocess

from conftest import REPO


def test_device_check_dry_run(tmp_path):
  proc = subprocess.run(
      ['bash', os.path.join(REPO, 'benchmarks/device_check.sh'), '--dry-run',
       f'--out={tmp_path}'], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.load(open(tmp_path / 'device_check.json'))['rows']
  impls = {r['impl'] for r in rows if r['case'] == 'attention'}
  assert {'xla', 'pallas'} <= impls
  for r in rows:
    assert 'error' not in r, r
  attn = [r for r in rows if r['case'] == 'attention']
  assert all(r['grad_max_rel_err'] < 0.05 for r in attn), attn
  steps = [r for r in rows if r['case'] == 'train_step']
  assert {(r['dtype'], r['scan_layers']) for r in steps} == {
      (d, s) for d in ('float32', 'bfloat16') for s in (False, True)}


def test_setup_admits_current_jax_on_python_312():
  from packaging.requirements import Requirement
  text = open(os.path.join(REPO, 'setup.py')).read()
  reqs = [Requirement(line.strip().strip("',"))
          for line in text.splitlines() if line.strip().startswith("'jax>=")]
  def allowed(version, python):
    return any(r.marker.evaluate({'python_version': python}) and
               r.specifier.contains(version) for r in reqs)
  assert allowed('0.12.0', '3.12') and allowed('0.11.2', '3.13')
  assert allowed('0.10.2', '3.11') and not allowed('0.11.2', '3.11')
