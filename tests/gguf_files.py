"""Tiny GGUF files for the tests, written the way llama.cpp's converter
writes them (shared by the tests under tests/checkpoints/)."""
import numpy as np


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
