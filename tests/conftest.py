"""Fixtures: tiny random HF checkpoints built on the fly (no binary fixtures)."""
import os

import numpy as np
import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

TINY = {
    'bert': dict(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, type_vocab_size=2),
    'roberta': dict(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=66, type_vocab_size=1,
                    pad_token_id=1),
    'gpt2': dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4,
                 n_positions=64),
    'llama': dict(vocab_size=97, hidden_size=48, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=128,
                  rope_theta=10000.0, tie_word_embeddings=False),
    'vit': dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=16, patch_size=4,
                num_channels=3),
}

_CLASSES = {'bert': 'BertForSequenceClassification',
            'roberta': 'RobertaForSequenceClassification',
            'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM',
            'vit': 'ViTForImageClassification'}


def make_hf_model(family, **overrides):
  import torch
  import transformers
  torch.manual_seed(0)
  kw = dict(TINY[family])
  kw.update(overrides)
  if family in ('bert', 'roberta', 'vit'):
    kw.setdefault('num_labels', 3)
  config = transformers.AutoConfig.for_model(family, **kw)
  model = getattr(transformers, _CLASSES[family])(config).eval()
  # Random (not default-initialised) norms and biases, so parity means more.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope='session')
def hf_checkpoint(tmp_path_factory):
  """hf_checkpoint(family) -> (folder, torch model)."""
  cache = {}

  def build(family, **overrides):
    key = (family, tuple(sorted(overrides.items())))
    if key not in cache:
      model = make_hf_model(family, **overrides)
      path = tmp_path_factory.mktemp(family)
      model.save_pretrained(str(path))
      cache[key] = (str(path), model)
    return cache[key]

  return build


def text_batch(vocab, batch=3, length=9, seed=0, pad_right=True):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, size=(batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  for i in range(1, batch):  # rows of different lengths
    n = length - 2 * i
    if pad_right:
      mask[i, n:] = 0
    else:
      mask[i, :length - n] = 0
  return ids, mask
