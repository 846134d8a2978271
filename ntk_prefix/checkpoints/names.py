"""Per-family maps from Hugging Face tensor names to our parameter paths.

Each rule: (regex over the HF name, our path template, transform). Paths use
'/' and may refer to regex groups as {0}. Transforms turn a PyTorch tensor
into our layout: 'linear' transposes [out, in] -> [in, out]; 'conv1d' is
GPT-2's already-[in, out] Conv1D; 'patch' is a Conv2d [o, c, kh, kw] ->
[kh, kw, c, o]; 'squeeze0' drops a leading batch axis.
"""
import re

import numpy as np

from ntk_prefix.trees import unflatten

# Prefixes HF task models put in front of the base model's names.
_BASE_PREFIXES = ('bert.', 'roberta.', 'transformer.', 'vit.')

# BERT's and ViT's feed-forward blocks share their names.
_ENCODER_MLP = [
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.weight',
     'layer_{0}/mlp/up/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.bias',
     'layer_{0}/mlp/up/bias', None),
    (r'encoder\.layer\.(\d+)\.output\.dense\.weight',
     'layer_{0}/mlp/down/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.output\.dense\.bias', 'layer_{0}/mlp/down/bias',
     None),
]

_ENCODER = [
    (r'embeddings\.word_embeddings\.weight', 'tokens/embedding', None),
    (r'embeddings\.position_embeddings\.weight', 'positions/embedding', None),
    (r'embeddings\.token_type_embeddings\.weight', 'types/embedding', None),
    (r'embeddings\.LayerNorm\.(weight|gamma)', 'embed_norm/scale', None),
    (r'embeddings\.LayerNorm\.(bias|beta)', 'embed_norm/bias', None),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight',
     'layer_{0}/attn/{1}/dense/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias',
     'layer_{0}/attn/{1}/dense/bias', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.weight',
     'layer_{0}/attn/out/dense/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.bias',
     'layer_{0}/attn/out/dense/bias', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|gamma)',
     'layer_{0}/attn_norm/scale', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(bias|beta)',
     'layer_{0}/attn_norm/bias', None),
] + _ENCODER_MLP + [
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|gamma)',
     'layer_{0}/mlp_norm/scale', None),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.(bias|beta)',
     'layer_{0}/mlp_norm/bias', None),
    (r'pooler\.dense\.weight', 'pooler/kernel', 'linear'),
    (r'pooler\.dense\.bias', 'pooler/bias', None),
    # Task heads (BertForSequenceClassification, RobertaFor...).
    (r'classifier\.weight', 'head/out/kernel', 'linear'),
    (r'classifier\.bias', 'head/out/bias', None),
    (r'classifier\.dense\.weight', 'head/dense/kernel', 'linear'),
    (r'classifier\.dense\.bias', 'head/dense/bias', None),
    (r'classifier\.out_proj\.weight', 'head/out/kernel', 'linear'),
    (r'classifier\.out_proj\.bias', 'head/out/bias', None),
]

_GPT2 = [
    (r'wte\.weight', 'tokens/embedding', None),
    (r'wpe\.weight', 'positions/embedding', None),
    (r'h\.(\d+)\.ln_1\.weight', 'layer_{0}/attn_norm/scale', None),
    (r'h\.(\d+)\.ln_1\.bias', 'layer_{0}/attn_norm/bias', None),
    (r'h\.(\d+)\.attn\.c_attn\.weight', 'layer_{0}/attn/qkv/kernel', 'conv1d'),
    (r'h\.(\d+)\.attn\.c_attn\.bias', 'layer_{0}/attn/qkv/bias', None),
    (r'h\.(\d+)\.attn\.c_proj\.weight', 'layer_{0}/attn/out/dense/kernel',
     'conv1d'),
    (r'h\.(\d+)\.attn\.c_proj\.bias', 'layer_{0}/attn/out/dense/bias', None),
    (r'h\.(\d+)\.ln_2\.weight', 'layer_{0}/mlp_norm/scale', None),
    (r'h\.(\d+)\.ln_2\.bias', 'layer_{0}/mlp_norm/bias', None),
    (r'h\.(\d+)\.mlp\.c_fc\.weight', 'layer_{0}/mlp/up/kernel', 'conv1d'),
    (r'h\.(\d+)\.mlp\.c_fc\.bias', 'layer_{0}/mlp/up/bias', None),
    (r'h\.(\d+)\.mlp\.c_proj\.weight', 'layer_{0}/mlp/down/kernel', 'conv1d'),
    (r'h\.(\d+)\.mlp\.c_proj\.bias', 'layer_{0}/mlp/down/bias', None),
    (r'ln_f\.weight', 'final_norm/scale', None),
    (r'ln_f\.bias', 'final_norm/bias', None),
]

_LLAMA = [
    (r'model\.embed_tokens\.weight', 'tokens/embedding', None),
    (r'model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight',
     'layer_{0}/attn/{1}/dense/kernel', 'linear'),
    (r'model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.bias',
     'layer_{0}/attn/{1}/dense/bias', None),
    (r'model\.layers\.(\d+)\.input_layernorm\.weight',
     'layer_{0}/attn_norm/scale', None),
    (r'model\.layers\.(\d+)\.post_attention_layernorm\.weight',
     'layer_{0}/mlp_norm/scale', None),
    (r'model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight',
     'layer_{0}/mlp/{1}/kernel', 'linear'),
    (r'model\.norm\.weight', 'final_norm/scale', None),
    (r'lm_head\.weight', 'lm_head/kernel', 'linear'),
]

_VIT = [
    (r'embeddings\.cls_token', 'cls', None),
    (r'embeddings\.position_embeddings', 'positions/embedding', 'squeeze0'),
    (r'embeddings\.patch_embeddings\.projection\.weight', 'patch/kernel',
     'patch'),
    (r'embeddings\.patch_embeddings\.projection\.bias', 'patch/bias', None),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight',
     'layer_{0}/attn/{1}/dense/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.bias',
     'layer_{0}/attn/{1}/dense/bias', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.weight',
     'layer_{0}/attn/out/dense/kernel', 'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.bias',
     'layer_{0}/attn/out/dense/bias', None),
    (r'encoder\.layer\.(\d+)\.layernorm_before\.weight',
     'layer_{0}/attn_norm/scale', None),
    (r'encoder\.layer\.(\d+)\.layernorm_before\.bias',
     'layer_{0}/attn_norm/bias', None),
    (r'encoder\.layer\.(\d+)\.layernorm_after\.weight',
     'layer_{0}/mlp_norm/scale', None),
    (r'encoder\.layer\.(\d+)\.layernorm_after\.bias', 'layer_{0}/mlp_norm/bias',
     None),
] + _ENCODER_MLP + [
    (r'layernorm\.weight', 'final_norm/scale', None),
    (r'layernorm\.bias', 'final_norm/bias', None),
    (r'classifier\.weight', 'head/out/kernel', 'linear'),
    (r'classifier\.bias', 'head/out/bias', None),
]

RULES = {'bert': _ENCODER, 'roberta': _ENCODER, 'gpt2': _GPT2,
         'llama': _LLAMA, 'vit': _VIT}

# Buffers and parts we do not use (their absence or presence is fine).
_IGNORED = re.compile(
    r'(position_ids|\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq|'
    r'^cls\.|^lm_head\.weight$|^pooler\.|^vit\.pooler\.)')

_LLAMA_PROJ = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}


def _transform(x: np.ndarray, how):
  if how == 'linear':
    return x.T
  if how == 'patch':
    return np.transpose(x, (2, 3, 1, 0))
  if how == 'squeeze0':
    return x[0]
  return x  # None, 'conv1d'


def to_tree(family: str, tensors: dict, tie_embeddings: bool) -> tuple:
  """HF tensors {name: array} -> (nested params, unused names, sources).

  sources maps each of our paths to the HF tensor name it came from.
  """
  rules = [(re.compile(p + '$'), t, f) for p, t, f in RULES[family]]
  flat, unused, sources = {}, [], {}
  for name, value in tensors.items():
    short = name
    for prefix in _BASE_PREFIXES:
      if short.startswith(prefix):
        short = short[len(prefix):]
        break
    for pattern, template, how in rules:
      match = pattern.match(short)
      if match:
        groups = [_LLAMA_PROJ.get(g, g) if family == 'llama' else g
                  for g in match.groups()]
        flat[template.format(*groups)] = _transform(np.asarray(value), how)
        sources[template.format(*groups)] = name
        break
    else:
      if not (_IGNORED.search(name) or
              (family == 'llama' and tie_embeddings and name == 'lm_head.weight')):
        unused.append(name)
  if family == 'llama' and tie_embeddings:
    flat.pop('lm_head/kernel', None)
  # GPT-2 fuses q, k, v into one Conv1D: split it into our three projections.
  for path in [p for p in flat if p.endswith('/attn/qkv/kernel')]:
    layer = path.split('/')[0]
    kernel = flat.pop(path)
    bias = flat.pop(f'{layer}/attn/qkv/bias')
    for name, k, b in zip(('query', 'key', 'value'),
                          np.split(kernel, 3, axis=1), np.split(bias, 3)):
      flat[f'{layer}/attn/{name}/dense/kernel'] = k
      flat[f'{layer}/attn/{name}/dense/bias'] = b
      for part in ('kernel', 'bias'):
        sources[f'{layer}/attn/{name}/dense/{part}'] = sources.get(
            f'{layer}/attn/qkv/{part}', '')
  return unflatten(flat), unused, sources
