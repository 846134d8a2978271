"""A truncated weights file is named, with what it is, in one error."""
import shutil

import pytest

from ntk_prefix import checkpoints
from ntk_prefix.checkpoints.hf import CheckpointError


def test_truncated_safetensors_names_the_file(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint('bert')
  copy = tmp_path / 'bert'
  shutil.copytree(path, copy)
  weights = copy / 'model.safetensors'
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=f'{weights} cannot be read as '
                     'safetensors.*truncated or corrupt'):
    checkpoints.load(str(copy))


def test_truncated_gguf_names_the_file(hf_checkpoint, tmp_path):
  from gguf_files import write_tiny_gguf
  _, model = hf_checkpoint('llama')
  path = tmp_path / 'tiny.gguf'
  write_tiny_gguf(path, model)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{path} cannot be read as GGUF.*'
                     'truncated or corrupt'):
    checkpoints.load(str(path))
