"""A run sharded over a device mesh (data, and data x model with frozen
parameter rules) trains exactly as the unsharded run."""
import numpy as np
import pytest

from conftest import losses, tiny_config
from ntk_prefix import train


@pytest.mark.parametrize('mesh,rules', [
    ({'mesh.data': 8}, ()),
    ({'mesh.data': 4, 'mesh.model': 2}, (('.*kernel', 'model'),
                                         ('.*embedding', 'data'))),
])
def test_sharded_run_equals_unsharded(tiny_encoder, prepared_dir, tmp_path,
                                      mesh, rules):
  base = tiny_config(tiny_encoder, prepared_dir)
  train.train_and_evaluate(base, str(tmp_path / 'one'))
  sharded = tiny_config(tiny_encoder, prepared_dir, **mesh)
  if rules:
    sharded.sharding.frozen_rules = rules
  train.train_and_evaluate(sharded, str(tmp_path / 'many'))
  np.testing.assert_allclose(losses(str(tmp_path / 'many')),
                             losses(str(tmp_path / 'one')), rtol=2e-5)
