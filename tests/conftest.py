"""Fixtures: tiny random HF checkpoints built on the fly (no binary fixtures)."""
import os

import numpy as np
import pytest

# Eight simulated devices for the mesh tests. The models here are tiny, so
# compiling costs more than running: the CPU backend's cheaper code
# generation cut tests/methods' CPU time from 280 to 238 s (-15%).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_backend_optimization_level=0 '
                      '--xla_llvm_disable_expensive_passes=true')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def _share_compiled_programs():
  """The tests build the same tiny models over and over, in both xdist
  workers and in subprocesses: one persistent XLA cache for the whole run
  turns most compiles into reads (tests/test_train.py and tests/methods:
  518 -> 442 s of CPU). Made by the first process to load this file (the
  xdist controller), inherited through the environment, removed at exit."""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  import atexit
  import shutil
  import tempfile
  path = tempfile.mkdtemp(prefix='ntk_prefix_tests_xla_')
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


_share_compiled_programs()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


@pytest.fixture(scope='session')
def tiny_encoder(tmp_path_factory):
  """A tiny random BERT that uses the real MiniLM word-piece tokenizer."""
  import transformers
  from ntk_prefix.checkpoints import paths
  model = make_hf_model('bert', vocab_size=30522, num_labels=3)
  path = tmp_path_factory.mktemp('tiny_bert')
  model.save_pretrained(str(path))
  tok = transformers.AutoTokenizer.from_pretrained(
      paths.default_encoder_path())
  tok.save_pretrained(str(path))
  return str(path)


@pytest.fixture(scope='session')
def prepared_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(model_path, prepared, **overrides):
  from ntk_prefix import config as config_lib
  c = config_lib.get_config(os.path.join(REPO, 'configs/default.py:runlocal'))
  c.model.path = model_path
  c.task.name = 'cb'
  c.task.prepared_dir = prepared
  c.task.train_limit = 64
  c.task.eval_limit = 32
  c.task.max_length = 48
  c.batch_size = 8
  c.total_steps = 12
  c.eval_every = 6
  c.checkpoint_every = 4
  c.log_every = 1
  c.progress = False
  c.mesh.data = 1
  for k, v in overrides.items():
    config_lib.override(c, k, v)
  return c




def train_command(c, workdir, *extra):
  """`python -m ntk_prefix.train` for the tiny config `c` (its overrides of
  the runlocal config spelt out)."""
  import sys
  cmd = [sys.executable, '-m', 'ntk_prefix.train',
         f'--config={REPO}/configs/default.py:runlocal', f'--workdir={workdir}']
  for key in ('model.path', 'task.name', 'task.prepared_dir',
              'task.train_limit', 'task.eval_limit', 'task.max_length',
              'batch_size', 'total_steps', 'eval_every', 'checkpoint_every',
              'log_every', 'progress', 'mesh.data', 'method.name'):
    node = c
    for part in key.split('.'):
      node = node[part]
    cmd.append(f'--config.{key}={node}')
  return cmd + list(extra)


def read_metrics(workdir):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def losses(workdir):
  return [r['train_loss'] for r in read_metrics(workdir) if 'train_loss' in r]


@pytest.fixture
def command(monkeypatch):
  """command(module, argv): `python -m MODULE ARGV` in this process, its
  absl flags parsed as app.run parses them (config_flags reads sys.argv)."""
  import sys
  from absl import flags

  def run(module, argv):
    values = flags.FLAGS
    # config_flags defines one flag per --config.KEY at each parse.
    for name in [n for n in values if n.startswith('config.')]:
      delattr(values, name)
    values.unparse_flags()
    monkeypatch.setattr(sys, 'argv', [module.__name__, *argv])
    return module.main(values(sys.argv))
  return run
