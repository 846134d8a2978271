"""Read llama.cpp GGUF checkpoints (LLaMA architecture) without torch.

The `gguf` package dequantizes tensors to NumPy. llama.cpp's converter
permutes the rows of Q and K for its RoPE layout; `unpermute` undoes it, so
the tensors match the Hugging Face layout our name map expects.
"""
import functools
import os
import re

import numpy as np

from ntk_prefix.checkpoints import names
from ntk_prefix.checkpoints.shapes import check_shapes
from ntk_prefix.models.config import ModelConfig

_NAMES = [
    (r'token_embd\.weight', 'model.embed_tokens.weight'),
    (r'output_norm\.weight', 'model.norm.weight'),
    (r'output\.weight', 'lm_head.weight'),
    (r'blk\.(\d+)\.attn_norm\.weight', 'model.layers.{0}.input_layernorm.weight'),
    (r'blk\.(\d+)\.ffn_norm\.weight',
     'model.layers.{0}.post_attention_layernorm.weight'),
    (r'blk\.(\d+)\.attn_q\.weight', 'model.layers.{0}.self_attn.q_proj.weight'),
    (r'blk\.(\d+)\.attn_k\.weight', 'model.layers.{0}.self_attn.k_proj.weight'),
    (r'blk\.(\d+)\.attn_v\.weight', 'model.layers.{0}.self_attn.v_proj.weight'),
    (r'blk\.(\d+)\.attn_output\.weight',
     'model.layers.{0}.self_attn.o_proj.weight'),
    (r'blk\.(\d+)\.ffn_gate\.weight', 'model.layers.{0}.mlp.gate_proj.weight'),
    (r'blk\.(\d+)\.ffn_up\.weight', 'model.layers.{0}.mlp.up_proj.weight'),
    (r'blk\.(\d+)\.ffn_down\.weight', 'model.layers.{0}.mlp.down_proj.weight'),
]


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` of Q/K rows ([out, in] layout)."""
  return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def read(path: str):
  """The file's reader, parsed once per process while the file is unchanged:
  gguf parses metadata in Python (SmolLM2's 49,152 tokens and merges: 5 s
  on this 2-core machine, 18 s when busy), and a run reads both the weights
  and the tokenizer, a table many runs."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'GGUF file {path!r} does not exist.')
  stat = os.stat(path)
  return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read(path: str, mtime_ns: int, size: int):
  del mtime_ns, size  # the cache key: a rewritten file is parsed again
  import gguf
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader's own error names no file
    raise ValueError(f'{path} cannot be read as GGUF ({type(e).__name__}: '
                     f'{e}); it is truncated or corrupt. Copy it again from '
                     'its source.') from None


def config_from_gguf(reader, path: str) -> ModelConfig:
  arch = _field(reader, 'general.architecture')
  if arch != 'llama':
    raise ValueError(f'{path}: general.architecture={arch!r}; only llama '
                     'GGUF files are supported.')
  g = lambda k, d=None: _field(reader, f'llama.{k}', d)
  heads = int(g('attention.head_count'))
  hidden = int(g('embedding_length'))
  tensor_names = {t.name for t in reader.tensors}
  vocab = g('vocab_size') or len(_field(reader, 'tokenizer.ggml.tokens'))
  return ModelConfig(
      family='llama', hidden_size=hidden, num_layers=int(g('block_count')),
      num_heads=heads, num_kv_heads=int(g('attention.head_count_kv', heads)),
      head_dim=int(g('rope.dimension_count', hidden // heads)),
      intermediate_size=int(g('feed_forward_length')),
      max_positions=int(g('context_length')), vocab_size=int(vocab),
      norm='rms', norm_eps=float(g('attention.layer_norm_rms_epsilon')),
      pre_norm=True, activation='silu', gated_mlp=True, causal=True,
      rope_theta=float(g('rope.freq_base', 10000.0)), attn_bias=False,
      mlp_bias=False, tie_embeddings='output.weight' not in tensor_names,
      pad_token_id=int(_field(reader, 'tokenizer.ggml.padding_token_id', 0)),
      name=os.path.basename(path))


def hf_tensors(reader, cfg: ModelConfig) -> dict:
  """Dequantized tensors under their HF names, Q/K un-permuted."""
  import gguf
  rules = [(re.compile(p + '$'), t) for p, t in _NAMES]
  out = {}
  for tensor in reader.tensors:
    for pattern, template in rules:
      match = pattern.match(tensor.name)
      if match:
        break
    else:
      continue  # e.g. rope_freqs: recomputed from rope.freq_base
    name = template.format(*match.groups())
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    w = np.asarray(w, np.float32).reshape([int(s) for s in
                                           reversed(tensor.shape)])
    if name.endswith('q_proj.weight'):
      w = unpermute(w, cfg.num_heads)
    elif name.endswith('k_proj.weight'):
      w = unpermute(w, cfg.num_kv_heads)
    out[name] = w
  return out


def load(path: str, dtype=np.float32):
  import jax
  reader = read(path)
  cfg = config_from_gguf(reader, path)
  params, _, sources = names.to_tree('llama', hf_tensors(reader, cfg),
                                     cfg.tie_embeddings)
  check_shapes(cfg, params, path, sources)
  return cfg, jax.tree.map(lambda x: np.asarray(x, dtype), params), None


def load_tokenizer(path: str):
  """A fast tokenizer built from the GGUF metadata (BPE 'gpt2' models)."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  reader = read(path)
  kind = _field(reader, 'tokenizer.ggml.model')
  if kind != 'gpt2':
    raise ValueError(f'{path}: tokenizer.ggml.model={kind!r}; only byte-level '
                     'BPE ("gpt2") tokenizers are supported.')
  tokens = list(_field(reader, 'tokenizer.ggml.tokens'))
  types = list(_field(reader, 'tokenizer.ggml.token_type', [1] * len(tokens)))
  merges = [tuple(m.split(' ', 1))
            for m in _field(reader, 'tokenizer.ggml.merges') or []]
  bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                   fuse_unk=False)
  tok = Tokenizer(bpe)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  pre = _field(reader, 'tokenizer.ggml.pre', 'gpt2')
  if pre in ('smollm', 'starcoder', 'refact', 'qwen2', 'llama3', 'llama-bpe'):
    # These split digits one by one before the byte-level regex.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  control = [t for t, ty in zip(tokens, types) if ty == 3]  # CONTROL
  tok.add_special_tokens(control)

  def token(key):
    i = _field(reader, f'tokenizer.ggml.{key}_token_id')
    return None if i is None else tokens[int(i)]

  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=token('bos'), eos_token=token('eos'),
      unk_token=token('unknown'), pad_token=token('padding') or token('eos'))
  template = _field(reader, 'tokenizer.chat_template')
  if template:
    tokenizer.chat_template = template
  return tokenizer
