"""GGUF loading: Q/K un-permuted, logits equal transformers' GGUF loader."""
import numpy as np
import pytest
import torch

from conftest import text_batch
from ntk_prefix import checkpoints, models
from ntk_prefix.checkpoints import gguf as our_gguf


def _permute(w, n_head):  # llama.cpp's converter, written from its docs
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path, model):
  import gguf
  cfg = model.config
  writer = gguf.GGUFWriter(str(path), 'llama')
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  writer.add_rope_freq_base(cfg.rope_parameters['rope_theta'])
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  # A byte-level BPE vocabulary: tokens are single characters, no merges.
  letters = [chr(ord('a') + i) for i in range(26)]
  tokens = ['<unk>', '<s>', '</s>'] + letters + [
      f'x{i}' for i in range(cfg.vocab_size - 29)]
  writer.add_tokenizer_model('gpt2')
  writer.add_token_list(tokens)
  writer.add_token_types([3, 3, 3] + [1] * (cfg.vocab_size - 3))
  writer.add_token_merges([])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  sd = {k: v.detach().numpy().astype(np.float32)
        for k, v in model.state_dict().items()}
  names = {'model.embed_tokens.weight': 'token_embd.weight',
           'model.norm.weight': 'output_norm.weight',
           'lm_head.weight': 'output.weight'}
  per_layer = {'input_layernorm.weight': 'attn_norm.weight',
               'post_attention_layernorm.weight': 'ffn_norm.weight',
               'self_attn.q_proj.weight': 'attn_q.weight',
               'self_attn.k_proj.weight': 'attn_k.weight',
               'self_attn.v_proj.weight': 'attn_v.weight',
               'self_attn.o_proj.weight': 'attn_output.weight',
               'mlp.gate_proj.weight': 'ffn_gate.weight',
               'mlp.up_proj.weight': 'ffn_up.weight',
               'mlp.down_proj.weight': 'ffn_down.weight'}
  for i in range(cfg.num_hidden_layers):
    for hf, gg in per_layer.items():
      names[f'model.layers.{i}.{hf}'] = f'blk.{i}.{gg}'
  for hf, gg in names.items():
    w = sd[hf]
    if hf.endswith('q_proj.weight'):
      w = _permute(w, cfg.num_attention_heads)
    if hf.endswith('k_proj.weight'):
      w = _permute(w, cfg.num_key_value_heads)
    writer.add_tensor(gg, np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


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
