"""Bad checkpoints and inputs give one clear error."""
import json
import shutil

import jax
import numpy as np
import pytest

from ntk_prefix import checkpoints, methods, models


def test_missing_folder(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='does not exist'):
    checkpoints.load(str(tmp_path / 'nope'))


def test_unsupported_model_type(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint('bert')
  bad = tmp_path / 'bad'
  shutil.copytree(path, bad)
  cfg = json.loads((bad / 'config.json').read_text())
  cfg['model_type'] = 'albert'
  cfg['architectures'] = ['AlbertModel']
  (bad / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(checkpoints.CheckpointError,
                     match="model_type 'albert' is not supported"):
    checkpoints.load(str(bad))


def test_mismatched_tensor_names_file_tensor_and_shapes(hf_checkpoint,
                                                        tmp_path):
  path, _ = hf_checkpoint('bert')
  bad = tmp_path / 'bad'
  shutil.copytree(path, bad)
  cfg = json.loads((bad / 'config.json').read_text())
  cfg['intermediate_size'] = 80  # the weights were saved with 64
  (bad / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"model.safetensors: tensor 'bert.encoder.layer.0."
                     r"(intermediate|output).dense.weight' .* has shape "
                     r"\((64, 32|32, 64)\) but config.json implies "
                     r"\((80, 32|32, 80)\)"):
    checkpoints.load(str(bad))


def test_too_long_input_is_an_error(hf_checkpoint):
  path, _ = hf_checkpoint('bert')  # 64 positions
  cfg, frozen, _ = checkpoints.load(path)
  ids = np.ones((1, 65), np.int32)
  with pytest.raises(ValueError, match='needs 65 positions.*allowing 64'):
    models.apply(cfg, frozen, {}, {'input_ids': ids})
  method = methods.get('p_tuning_v2', cfg, {'length': 10})
  params = method.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='position offset of 10'):
    models.apply(cfg, frozen, params, {'input_ids': ids[:, :60]},
                 adapter=method)

