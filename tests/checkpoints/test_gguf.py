"""GGUF loading: Q/K un-permuted, logits equal transformers' GGUF loader."""
import numpy as np
import pytest
import torch

from conftest import text_batch
from gguf_files import _permute, write_tiny_gguf  # noqa: F401
from ntk_prefix import checkpoints, models
from ntk_prefix.checkpoints import gguf as our_gguf


@pytest.fixture(scope='module')
def tiny_gguf(hf_checkpoint, tmp_path_factory):
  _, model = hf_checkpoint('llama')
  path = tmp_path_factory.mktemp('gguf') / 'tiny.gguf'
  write_tiny_gguf(path, model)
  return path, model


def test_unpermute_inverts_permute():
  w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
  np.testing.assert_array_equal(our_gguf.unpermute(_permute(w, 3), 3), w)
  assert not np.array_equal(_permute(w, 3), w)


def test_gguf_logits_match_transformers_gguf_loader(tiny_gguf):
  import transformers
  path, model = tiny_gguf
  cfg, frozen, _ = checkpoints.load(str(path))
  assert (cfg.num_kv_heads, cfg.tie_embeddings) == (2, False)
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name).eval()
  ids, mask = text_batch(97)
  out = models.apply(cfg, frozen, {}, {'input_ids': ids,
                                       'attention_mask': mask})
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    ref = ref_model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions)).logits.numpy()
  m = mask[..., None].astype(bool)
  np.testing.assert_allclose(np.where(m, out['logits'], 0),
                             np.where(m, ref, 0), atol=1e-4)


def test_gguf_tokenizer_from_metadata(tiny_gguf):
  path, _ = tiny_gguf
  tok = checkpoints.load_tokenizer(str(path))
  assert tok.eos_token == '</s>' and tok.bos_token == '<s>'
  ids = tok('ab</s>')['input_ids']
  assert ids == [3, 4, 2]
  assert tok.decode([3, 4]) == 'ab'


def test_smollm2_tokenizer_matches_transformers():
  import os
  import transformers
  path = checkpoints.default_decoder_path()
  ours = checkpoints.load_tokenizer(path)
  ref = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  for text in ['Hello world! 12345 tokens, éà ü', '  two  spaces\n\nnew',
               'Natalia sold 48 clips.\n#### 72',
               '<|im_start|>user\nhi<|im_end|>']:
    assert ours(text)['input_ids'] == ref(text)['input_ids'], text


def test_a_rewritten_gguf_file_is_read_again(hf_checkpoint, tmp_path):
  """The parsed metadata is kept per process; a file written again at the
  same path is parsed again, not served from that memo."""
  path = tmp_path / 'tiny.gguf'
  write_tiny_gguf(path, hf_checkpoint('llama')[1])
  assert checkpoints.load(str(path))[0].num_layers == 2
  write_tiny_gguf(path, hf_checkpoint('llama', num_hidden_layers=1)[1])
  assert checkpoints.load(str(path))[0].num_layers == 1
