"""Adapters to and from Hugging Face PEFT's format (adapter_model.safetensors
+ adapter_config.json), for the methods PEFT shares with us.

- Prefix-Tuning and P-Tuning v2 -> PEFT PREFIX_TUNING (inference form: the
  per-layer keys/values as `prompt_embeddings` [m, layers * 2 * kv_dim], in
  PEFT's [m, layer, key/value, kv_head, head_dim] order). Prefix-Tuning's MLP
  is materialised first, as PEFT does when it saves. PEFT shifts positions by
  m, so only states with shift_positions=True export. Import gives a
  P-Tuning v2 state.
- LoRA on LLaMA-family models (separate q/k/v/o projections) -> PEFT LORA:
  lora_A = a^T [rank, in], lora_B = b^T [out, rank], same alpha / rank.
"""
import json
import os

import jax
import numpy as np

from ntk_prefix import methods
from ntk_prefix.methods.base import MethodError

_LORA_MODULES = {'query': 'q_proj', 'key': 'k_proj', 'value': 'v_proj',
                 'out': 'o_proj'}
_LORA_KEY = 'base_model.model.model.layers.{}.self_attn.{}.lora_{}.weight'


def save(directory: str, method, method_params,
         base_model_name_or_path: str = '') -> None:
  """Writes adapter_model.safetensors and adapter_config.json."""
  from safetensors.numpy import save_file
  cfg = method.model
  common = {'task_type': 'CAUSAL_LM', 'inference_mode': True,
            'base_model_name_or_path': base_model_name_or_path or cfg.name,
            'revision': None}
  params = jax.device_get(method_params)
  if method.peft_type == 'PREFIX_TUNING':
    if not getattr(method.opts, 'shift_positions', True):
      raise MethodError(
          f'method.{method.name}.shift_positions=False: PEFT always shifts '
          'input positions by the prefix length, so this state would not '
          'mean the same there. Train with shift_positions=True to export.')
    kv = method.explicit_prefix(params)
    k, v = np.asarray(kv['k']), np.asarray(kv['v'])  # [L, m, kvh, d]
    m = k.shape[1]
    emb = np.stack([k, v], 1).transpose(2, 0, 1, 3, 4).reshape(m, -1)
    tensors = {'prompt_embeddings': emb.astype(np.float32)}
    config = dict(common, peft_type='PREFIX_TUNING', num_virtual_tokens=m,
                  num_layers=cfg.num_layers, token_dim=None,
                  num_attention_heads=None, num_transformer_submodules=1,
                  prefix_projection=False, encoder_hidden_size=None)
  elif method.peft_type == 'LORA':
    if cfg.family != 'llama':
      raise MethodError(f'PEFT LoRA export needs separate q/k/v/o '
                        f'projections (LLaMA family); {cfg.family} fuses '
                        'them in HF.')
    tensors = {}
    for target, module in _LORA_MODULES.items():
      if target not in params:
        continue
      for layer in range(cfg.num_layers):
        a = np.asarray(params[target]['a'][layer])
        b = np.asarray(params[target]['b'][layer])
        tensors[_LORA_KEY.format(layer, module, 'A')] = np.ascontiguousarray(
            a.T, np.float32)
        tensors[_LORA_KEY.format(layer, module, 'B')] = np.ascontiguousarray(
            b.T, np.float32)
    config = dict(common, peft_type='LORA', r=method.opts.rank,
                  lora_alpha=method.opts.alpha, lora_dropout=0.0,
                  target_modules=[_LORA_MODULES[t] for t in method.opts.targets],
                  bias='none', fan_in_fan_out=False, use_rslora=False)
  else:
    exportable = [n for n, c in methods.REGISTRY.items() if c.peft_type]
    raise MethodError(f'{method.name} has no PEFT counterpart; PEFT export '
                      f'takes {exportable} (use ntk_prefix.export for every '
                      'method).')
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, 'adapter_model.safetensors'))
  with open(os.path.join(directory, 'adapter_config.json'), 'w') as f:
    json.dump(config, f, indent=2)


def load(directory: str, model_cfg) -> tuple:
  """A PEFT adapter folder -> (method, method_params) on our model."""
  from safetensors.numpy import load_file
  path = os.path.join(directory, 'adapter_config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{directory}: no adapter_config.json (not a '
                            'PEFT adapter folder).')
  with open(path) as f:
    config = json.load(f)
  tensors = load_file(os.path.join(directory, 'adapter_model.safetensors'))
  kind = config.get('peft_type')
  target = next((n for n, c in methods.REGISTRY.items()
                 if c.peft_type == kind and c.peft_imports), None)
  L, kvh, d = model_cfg.num_layers, model_cfg.num_kv_heads, model_cfg.head_dim
  if kind == 'PREFIX_TUNING':
    emb = tensors['prompt_embeddings']
    m = config['num_virtual_tokens']
    if emb.shape != (m, L * 2 * kvh * d):
      raise MethodError(
          f'{directory}: prompt_embeddings has shape {emb.shape}; this model '
          f'({model_cfg.dimensions()}) needs ({m}, {L * 2 * kvh * d}). It was '
          'trained on a model of other dimensions.')
    kv = emb.reshape(m, L, 2, kvh, d).transpose(2, 1, 0, 3, 4)
    cls = methods.REGISTRY[target]
    method = methods.get(target, model_cfg, {cls.prefix_length_option: m,
                                             'shift_positions': True})
    return method, {'k': jax.numpy.asarray(kv[0]),
                    'v': jax.numpy.asarray(kv[1])}
  if kind == 'LORA':
    inverse = {v: k for k, v in _LORA_MODULES.items()}
    targets = [inverse[t] for t in config['target_modules']]
    method = methods.get(target, model_cfg, {
        'rank': config['r'], 'alpha': float(config['lora_alpha']),
        'targets': tuple(targets)})
    params = {}
    for target in targets:
      module = _LORA_MODULES[target]
      a = [tensors[_LORA_KEY.format(l, module, 'A')].T for l in range(L)]
      b = [tensors[_LORA_KEY.format(l, module, 'B')].T for l in range(L)]
      params[target] = {'a': jax.numpy.asarray(np.stack(a)),
                        'b': jax.numpy.asarray(np.stack(b))}
    method.check_params(params)
    return method, params
  raise MethodError(f'{directory}: peft_type={kind!r}; we import '
                    'PREFIX_TUNING and LORA.')
