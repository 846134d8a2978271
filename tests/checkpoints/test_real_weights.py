"""Parity on the real embedded weights, not only tiny random models:
all-MiniLM-L6-v2 against transformers' BertModel, and SmolLM2-135M (Q4_1 /
Q8_0 GGUF) dequantised by a NumPy decoder written here from the ggml block
layout, by the gguf package, and run through transformers'
LlamaForCausalLM built from the same tensors (tied embeddings)."""
import numpy as np
import pytest
import torch

from ntk_prefix import checkpoints, models
from ntk_prefix.checkpoints import gguf as our_gguf
from gguf_files import _permute

SENTENCES = ['The movie was a delight from start to finish.',
             'Not worth the ticket.', 'Natalia sold 48 clips in April.']


def _tokens(tok, pad_id):
  enc = [tok(s)['input_ids'] for s in SENTENCES]
  n = max(map(len, enc))
  ids = np.full((len(enc), n), pad_id, np.int32)
  mask = np.zeros((len(enc), n), np.int32)
  for i, e in enumerate(enc):
    ids[i, :len(e)], mask[i, :len(e)] = e, 1
  return ids, mask


def test_minilm_hidden_states_equal_transformers_bert():
  import transformers
  path = checkpoints.default_encoder_path()
  cfg, frozen, _ = checkpoints.load(path)
  tok = checkpoints.load_tokenizer(path)
  ids, mask = _tokens(tok, tok.pad_token_id)
  types = np.zeros_like(ids)
  out = models.apply(cfg, frozen, {}, {'input_ids': ids,
                                       'attention_mask': mask,
                                       'token_type_ids': types})
  ref_model = transformers.BertModel.from_pretrained(path).eval()
  with torch.no_grad():
    ref = ref_model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types, dtype=torch.long))
  m = mask[..., None].astype(bool)
  hidden = ref.last_hidden_state.numpy()
  assert np.abs(hidden).max() > 1  # real activations, not a blank model
  np.testing.assert_allclose(np.where(m, out['hidden'], 0),
                             np.where(m, hidden, 0), atol=1e-4)


# ggml block layouts (32 values a block), from ggml's quantisation docs:
#   Q4_1: fp16 d, fp16 m, 16 bytes; value j = d * nibble_j + m, the low
#         nibbles give values 0..15 and the high nibbles 16..31.
#   Q8_0: fp16 d, 32 int8; value j = d * q_j.
def _decode_q4_1(raw: np.ndarray) -> np.ndarray:
  blocks = raw.reshape(-1, 20)
  d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
  m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
  qs = blocks[:, 4:20]
  q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
  return d * q + m


def _decode_q8_0(raw: np.ndarray) -> np.ndarray:
  blocks = raw.reshape(-1, 34)
  d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
  return d * blocks[:, 2:34].copy().view(np.int8).astype(np.float32)


@pytest.fixture(scope='module')
def smollm2():
  path = checkpoints.default_decoder_path()
  reader = our_gguf.read(path)
  cfg = our_gguf.config_from_gguf(reader, path)
  return path, reader, cfg


def test_smollm2_dequantisation_equals_numpy_decoder_and_gguf(smollm2):
  import gguf
  _, reader, cfg = smollm2
  ours = our_gguf.hf_tensors(reader, cfg)
  decoders = {'Q4_1': _decode_q4_1, 'Q8_0': _decode_q8_0}
  seen = set()
  for t in reader.tensors:
    kind = t.tensor_type.name
    if kind not in decoders or not (t.name.startswith('blk.0.') or
                                    t.name == 'token_embd.weight'):
      continue
    seen.add(kind)
    shape = [int(s) for s in reversed(t.shape)]
    mine = decoders[kind](np.asarray(t.data)).reshape(shape)
    package = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                         np.float32).reshape(shape)
    np.testing.assert_array_equal(mine, package, err_msg=t.name)
    hf_name = {'token_embd.weight': 'model.embed_tokens.weight'}.get(t.name)
    if hf_name is None:
      part = t.name.split('.', 2)[2]
      hf_name = 'model.layers.0.' + {
          'attn_q.weight': 'self_attn.q_proj.weight',
          'attn_k.weight': 'self_attn.k_proj.weight',
          'attn_v.weight': 'self_attn.v_proj.weight',
          'attn_output.weight': 'self_attn.o_proj.weight',
          'ffn_gate.weight': 'mlp.gate_proj.weight',
          'ffn_up.weight': 'mlp.up_proj.weight',
          'ffn_down.weight': 'mlp.down_proj.weight'}[part]
    loaded = ours[hf_name]
    if 'q_proj' in hf_name:  # our loader un-permutes llama.cpp's Q/K rows
      loaded = _permute(loaded, cfg.num_heads)
    elif 'k_proj' in hf_name:
      loaded = _permute(loaded, cfg.num_kv_heads)
    np.testing.assert_array_equal(loaded, mine, err_msg=t.name)
  assert seen == {'Q4_1', 'Q8_0'}


def test_smollm2_logits_equal_transformers_llama(smollm2):
  import transformers
  path, reader, cfg = smollm2
  assert cfg.tie_embeddings and (cfg.num_heads, cfg.num_kv_heads) == (9, 3)
  tensors = our_gguf.hf_tensors(reader, cfg)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_positions,
      tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  missing, unexpected = model.load_state_dict(
      {k: torch.tensor(v) for k, v in tensors.items()}, strict=False)
  assert unexpected == [] and set(missing) <= {'lm_head.weight'}
  model.tie_weights()
  assert model.lm_head.weight.data_ptr() == \
      model.model.embed_tokens.weight.data_ptr()

  _, frozen, _ = checkpoints.load(path)
  tok = checkpoints.load_tokenizer(path)
  ids, mask = _tokens(tok, tok.pad_token_id)
  out = models.apply(cfg, frozen, {}, {'input_ids': ids,
                                       'attention_mask': mask})
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask)).logits.numpy()
  m = mask[..., None].astype(bool)
  assert np.abs(ref).max() > 5  # a real model's logits
  np.testing.assert_allclose(np.where(m, out['logits'], 0),
                             np.where(m, ref, 0), atol=2e-3, rtol=1e-4)
  # And it is a language model: it prefers the text's own next tokens.
  logp = torch.log_softmax(torch.tensor(np.asarray(out['logits'])), -1)
  nxt = logp[:, :-1].gather(-1, torch.tensor(ids[:, 1:, None],
                                             dtype=torch.long))[..., 0]
  assert float((nxt * torch.tensor(mask[:, 1:])).sum() /
               mask[:, 1:].sum()) > -6.0
