"""Read a local Hugging Face checkpoint folder into (ModelConfig, params)."""
import json
import os
from typing import Any

import jax
import numpy as np

from ntk_prefix.checkpoints import gguf, names
from ntk_prefix.checkpoints.shapes import CheckpointError, check_shapes
from ntk_prefix.models.config import ModelConfig


def _act(name: str, where: str) -> str:
  known = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh':
           'gelu_new', 'silu': 'silu', 'swish': 'silu'}
  if name not in known:
    raise CheckpointError(f'{where}: hidden activation {name!r} is not '
                          f'supported; expected one of {sorted(known)}.')
  return known[name]


def config_from_hf(hf: Any, path: str = '') -> ModelConfig:
  """transformers PretrainedConfig -> ModelConfig."""
  where = os.path.join(path, 'config.json')
  mt = hf.model_type
  if mt in ('bert', 'roberta'):
    return ModelConfig(
        family=mt, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_attention_heads,
        head_dim=hf.hidden_size // hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        max_positions=hf.max_position_embeddings, vocab_size=hf.vocab_size,
        norm_eps=hf.layer_norm_eps, activation=_act(hf.hidden_act, where),
        type_vocab_size=hf.type_vocab_size, pad_token_id=hf.pad_token_id or 0,
        has_pooler=mt == 'bert', name=path)
  if mt == 'gpt2':
    return ModelConfig(
        family='gpt2', hidden_size=hf.n_embd, num_layers=hf.n_layer,
        num_heads=hf.n_head, num_kv_heads=hf.n_head,
        head_dim=hf.n_embd // hf.n_head,
        intermediate_size=hf.n_inner or 4 * hf.n_embd,
        max_positions=hf.n_positions, vocab_size=hf.vocab_size,
        norm_eps=hf.layer_norm_epsilon, pre_norm=True,
        activation=_act(hf.activation_function, where), causal=True,
        pad_token_id=hf.eos_token_id or 0, name=path)
  if mt == 'llama':
    rope = getattr(hf, 'rope_parameters', None) or {}
    theta = rope.get('rope_theta', getattr(hf, 'rope_theta', 10000.0))
    if rope.get('rope_type', 'default') != 'default':
      raise CheckpointError(f'{where}: rope_type {rope.get("rope_type")!r} '
                            'is not supported; only the default RoPE is.')
    head_dim = getattr(hf, 'head_dim', None) or (
        hf.hidden_size // hf.num_attention_heads)
    return ModelConfig(
        family='llama', hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=head_dim, intermediate_size=hf.intermediate_size,
        max_positions=hf.max_position_embeddings, vocab_size=hf.vocab_size,
        norm='rms', norm_eps=hf.rms_norm_eps, pre_norm=True,
        activation=_act(hf.hidden_act, where), gated_mlp=True, causal=True,
        rope_theta=float(theta), attn_bias=bool(hf.attention_bias),
        mlp_bias=bool(getattr(hf, 'mlp_bias', False)),
        tie_embeddings=bool(hf.tie_word_embeddings),
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        name=path)
  if mt == 'vit':
    return ModelConfig(
        family='vit', hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_attention_heads,
        head_dim=hf.hidden_size // hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        max_positions=(hf.image_size // hf.patch_size) ** 2 + 1,
        norm_eps=hf.layer_norm_eps, pre_norm=True,
        activation=_act(hf.hidden_act, where), attn_bias=bool(hf.qkv_bias),
        image_size=hf.image_size, patch_size=hf.patch_size,
        num_channels=hf.num_channels, name=path)
  raise CheckpointError(
      f'{where}: model_type {mt!r} is not supported; supported are bert, '
      'roberta, gpt2, llama, vit. Add a name map in '
      'ntk_prefix/checkpoints/names.py and a config translation here.')


def read_tensors(path: str) -> tuple:
  """All tensors of a folder as NumPy float32, and the file they came from."""
  st = os.path.join(path, 'model.safetensors')
  index = os.path.join(path, 'model.safetensors.index.json')
  binary = os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(st) or os.path.exists(index):
    from safetensors.numpy import load_file
    files = [st] if os.path.exists(st) else sorted(
        {os.path.join(path, f)
         for f in json.load(open(index))['weight_map'].values()})
    tensors = {}
    for f in files:
      try:
        tensors.update(load_file(f))
      except Exception as e:  # safetensors' own error names no file
        raise CheckpointError(
            f'{f} cannot be read as safetensors ({type(e).__name__}: {e}); '
            'it is truncated or corrupt. Copy it again from its source.'
        ) from None
    return tensors, files[0] if len(files) == 1 else index
  if os.path.exists(binary):
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(
          f'{binary} is a PyTorch pickle and torch is not installed. Convert '
          'it once to model.safetensors (or pip install torch==2.13.0, the '
          'CPU wheel).') from e
    state = torch.load(binary, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}, binary
  raise CheckpointError(
      f'{path}: no model.safetensors, model.safetensors.index.json or '
      'pytorch_model.bin. Point --config.model.path at a Hugging Face '
      'checkpoint folder (or a .gguf file).')


def load(path: str, dtype=np.float32) -> tuple:
  """HF folder -> (ModelConfig, frozen_params, head_params or None)."""
  if path.endswith('.gguf'):
    return gguf.load(path, dtype)
  if not os.path.isdir(path):
    raise CheckpointError(
        f'Checkpoint folder {path!r} does not exist. Pass a local folder with '
        'config.json and model.safetensors (or a .gguf file); nothing is '
        'downloaded at run time.')
  if not os.path.exists(os.path.join(path, 'config.json')):
    raise CheckpointError(f'{path}: no config.json in the checkpoint folder.')
  import transformers
  hf = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
  cfg = config_from_hf(hf, path)
  tensors, source = read_tensors(path)
  if cfg.family == 'bert' and not any(k.endswith('pooler.dense.weight')
                                      for k in tensors):
    cfg = _replace(cfg, has_pooler=False)
  params, _, sources = names.to_tree(cfg.family, tensors, cfg.tie_embeddings)
  head = params.pop('head', None)
  check_shapes(cfg, params, source, sources)
  params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
  if head is not None:
    head = jax.tree.map(lambda x: np.asarray(x, np.float32), head)
  return cfg, params, head


def _replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


def load_tokenizer(path: str):
  """A transformers fast tokenizer from the checkpoint folder (no network)."""
  import transformers
  if path.endswith('.gguf'):
    return gguf.load_tokenizer(path)
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
