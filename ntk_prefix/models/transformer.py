"""One configurable transformer for the four families (encoder, decoder, vision).

The families differ only in embeddings, block flavour and outputs, which the
`ModelConfig` states; the layer loop, where each layer asks the adapter (the
training method) for its `LayerHook`, is shared.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_prefix.models import layers, precision
from ntk_prefix.models.scanned import scanned_blocks
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.hook_types import NO_ADAPTER, NO_LAYER_HOOK, Adapter

Array = jax.Array


class Transformer(nn.Module):
  """apply({'params': frozen_params}, method_params, inputs) -> outputs.

  inputs: {'input_ids' [b, t], 'attention_mask' [b, t], optional
  'token_type_ids', optional 'segment_ids' [b, t] (decoders: several
  examples per row, data/packing.py)} for text, {'pixel_values'
  [b, c, h, w]} for vision.
  outputs: 'hidden' [b, t, hidden] (input positions only, soft prompts
  removed), 'pooled' [b, hidden] (a task head reads it: the training code
  applies `heads.classifier_logits`), 'logits' [b, t, vocab] for decoders.
  """
  cfg: ModelConfig
  adapter: Adapter = NO_ADAPTER
  remat: str = ''
  lm_logits: bool = True
  attention_impl: str = 'xla'  # models/fused.py
  # One scanned block over stacked parameters ('layers', leading axis the
  # layer; `stack_layers` makes them): compile time does not grow with depth.
  scan_layers: bool = False

  def setup(self):
    cfg = self.cfg
    if cfg.family == 'vit':
      self.patch = nn.Conv(cfg.hidden_size, (cfg.patch_size,) * 2,
                           strides=(cfg.patch_size,) * 2, padding='VALID',
                           name='patch')
      self.cls = self.param('cls', nn.initializers.zeros,
                            (1, 1, cfg.hidden_size))
    else:
      self.tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, name='tokens')
    if cfg.rope_theta is None:
      self.positions = nn.Embed(cfg.max_positions, cfg.hidden_size,
                                name='positions')
    if cfg.type_vocab_size:
      self.types = nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                            name='types')
    if cfg.family in ('bert', 'roberta'):
      self.embed_norm = layers.make_norm(cfg, 'embed_norm')
    if self.scan_layers:
      self.scanned = scanned_blocks(cfg, self.adapter, self.remat,
                                    self.attention_impl)
    else:
      block = layers.maybe_remat(layers.Block, self.remat)
      self.blocks = [block(cfg, self.attention_impl, name=f'layer_{i}')
                     for i in range(cfg.num_layers)]
    if cfg.pre_norm:
      self.final_norm = layers.make_norm(cfg, 'final_norm')
    if cfg.has_pooler:
      self.pooler = nn.Dense(cfg.hidden_size, name='pooler')
    if cfg.is_decoder and not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, name='lm_head',
                              dot_general=precision.dot_general_f32)

  def position_ids(self, mask: Array, offset: int) -> Array:
    """Each token's position for `mask` [b, t], the first at `offset`."""
    cfg = self.cfg
    if cfg.family == 'roberta':  # HF: padding_idx + 1 + count of real tokens
      return (jnp.cumsum(mask, 1) + offset) * mask + cfg.pad_token_id
    if cfg.is_decoder:  # left padding safe
      return layers.positions_from_mask(mask, offset)
    return jnp.broadcast_to(jnp.arange(mask.shape[1]) + offset, mask.shape)

  def _embed(self, inputs):
    """Word (or patch) embeddings and the mask, before positions."""
    cfg = self.cfg
    if cfg.family == 'vit':
      pixels = jnp.transpose(inputs['pixel_values'], (0, 2, 3, 1))  # NHWC
      x = self.patch(pixels)
      x = x.reshape(x.shape[0], -1, cfg.hidden_size)
      cls = jnp.broadcast_to(self.cls, (x.shape[0], 1, cfg.hidden_size))
      x = jnp.concatenate([cls.astype(x.dtype), x], 1)
      return x, jnp.ones(x.shape[:2], jnp.int32)
    ids = jnp.asarray(inputs['input_ids'], jnp.int32)
    mask = inputs.get('attention_mask')
    mask = jnp.ones_like(ids) if mask is None else mask.astype(jnp.int32)
    return self.tokens(ids), mask

  def _finish_embed(self, x, mask, inputs, offset, segments=None):
    """Adds positions/types and the embedding norm."""
    cfg = self.cfg
    positions = (self.position_ids(mask, offset) if segments is None else
                 layers.packed_positions(segments, offset))
    if cfg.rope_theta is None:
      x = x + self.positions(positions).astype(x.dtype)
    if cfg.type_vocab_size:
      types = inputs.get('token_type_ids')
      types = (jnp.zeros(mask.shape, jnp.int32) if types is None else
               jnp.asarray(types, jnp.int32))
      x = x + self.types(types).astype(x.dtype)
    if cfg.family in ('bert', 'roberta'):
      x = self.embed_norm(x)
    return x, positions

  def _run_blocks(self, x, mask, positions, method_params, use_adapter, train,
                  rng, condition=None):
    """condition: the tokens a method may condition on (default: mask)."""
    condition = mask if condition is None else condition
    state = self.adapter.layer_state(method_params) if use_adapter else None
    if self.scan_layers:
      x, _ = self.scanned(x, jnp.arange(self.cfg.num_layers), state, mask,
                          positions, condition, train, rng)
      return self.final_norm(x) if self.cfg.pre_norm else x
    if use_adapter and self.adapter.layer_stacked:  # see Adapter.layer_stacked
      state = jax.tree.map(lambda a: tuple(jnp.unstack(a)), state)
    for i, block in enumerate(self.blocks):
      hook = NO_LAYER_HOOK
      if use_adapter:
        layer_rng = None if rng is None else jax.random.fold_in(rng, i)
        hook = self.adapter.layer_hook(state, i, x, condition, train,
                                       layer_rng)
      x = block(x, mask, positions, hook)
    if self.cfg.pre_norm:
      x = self.final_norm(x)
    return x

  def _conditioning(self, words, mask, inputs):
    """(condition mask, instance_embedding thunk) for input-reading methods.

    IAPT and LoPA see only the instruction ('prompt_mask', from the data
    pipeline of generation tasks): a decoder must not condition on the answer
    it is trained to produce. The thunk is the frozen model's own pooled
    first pass over the input (LoPA's e(x)), computed only if asked for.
    """
    condition = inputs.get('prompt_mask')
    condition = mask if condition is None else (
        jnp.asarray(condition).astype(mask.dtype) * mask)

    def instance_embedding():
      x, positions = self._finish_embed(words, mask, inputs, 0)
      hidden = self._run_blocks(x, mask, positions, None, False, False, None)
      return jax.lax.stop_gradient(self._pool(hidden, condition))

    return condition, instance_embedding

  def _pool(self, hidden, mask):
    cfg = self.cfg
    if cfg.is_decoder:  # last real token (right or left padding)
      last = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[1]), 0), 1)
      return jnp.take_along_axis(hidden, last[:, None, None], 1)[:, 0]
    return hidden[:, 0]

  def __call__(self, method_params: Any, inputs: dict, train: bool = False,
               rng: Optional[Array] = None) -> dict:
    cfg = self.cfg
    adapter = self.adapter
    # ViT adds its positions before any prompt, so a prefix shifts nothing.
    offset = 0 if cfg.is_vision else adapter.position_offset()
    words, mask = self._embed(inputs)
    t = words.shape[1]
    segments = inputs.get('segment_ids')
    if segments is not None:
      if not cfg.is_decoder or adapter.per_example:
        raise ValueError(
            'Packed rows (segment_ids, task.pack=True) hold several examples '
            'of a decoder LM each; got ' + (
                f'a {cfg.family} model' if not cfg.is_decoder else
                f'method {getattr(adapter, "name", "mixed")!r}, whose state '
                'is computed from each example') + '. Set task.pack=False.')
      segments = jnp.asarray(segments, jnp.int32)
    condition, instance_embedding = self._conditioning(words, mask, inputs)
    prompt = adapter.input_hook(method_params, words, instance_embedding,
                                train, rng).prompt
    n = 0 if prompt is None else prompt.shape[1]
    # Soft prompts follow [CLS] in encoders (pooling stays at index 0) and
    # lead the sequence in decoders.
    at = 0 if cfg.is_decoder else 1
    if not cfg.is_vision:  # ViT prompts take no positions
      # A packed row's examples are shorter than the row, but which is
      # longest is not static: the row's width is checked (never a silent
      # wrap; task.pack=False lifts it).
      what = 'A packed row' if segments is not None else 'An input'
      layers.check_length(cfg, t + n + offset,
                          f'{what} of {t} tokens with {n} prompt tokens and '
                          f'a position offset of {offset}')

    def insert(a, piece):
      return jnp.concatenate([a[:, :at], piece, a[:, at:]], 1)

    if cfg.family == 'vit':  # ViT: positions first, prompts after (VPT)
      x, positions = self._finish_embed(words, mask, inputs, 0)
      if n:
        prompt = jnp.broadcast_to(prompt, (x.shape[0], n, cfg.hidden_size))
        x = insert(x, prompt.astype(x.dtype))
        mask = insert(mask, jnp.ones((x.shape[0], n), mask.dtype))
        condition = insert(condition, jnp.ones((x.shape[0], n), mask.dtype))
        positions = insert(positions, jnp.zeros((x.shape[0], n),
                                                positions.dtype))
    else:
      if n:
        prompt = jnp.broadcast_to(prompt, (words.shape[0], n, cfg.hidden_size))
        words = insert(words, prompt.astype(words.dtype))
        mask = insert(mask, jnp.ones((words.shape[0], n), mask.dtype))
        condition = insert(condition, jnp.ones((words.shape[0], n),
                                               mask.dtype))
        if segments is not None:  # every example of a row reads them
          segments = insert(segments, -jnp.ones((words.shape[0], n),
                                                segments.dtype))
        inputs = dict(inputs)
        if inputs.get('token_type_ids') is not None:
          inputs['token_type_ids'] = insert(
              jnp.asarray(inputs['token_type_ids'], jnp.int32),
              jnp.zeros((words.shape[0], n), jnp.int32))
      x, positions = self._finish_embed(words, mask, inputs, offset,
                                        segments)

    block_mask = mask if segments is None else layers.packed_mask(segments)
    hidden = self._run_blocks(x, block_mask, positions, method_params, True,
                              train, rng, condition)
    if n:
      hidden = jnp.concatenate([hidden[:, :at], hidden[:, at + n:]], 1)
      mask = jnp.concatenate([mask[:, :at], mask[:, at + n:]], 1)
    pooled = self._pool(hidden, mask)
    if cfg.has_pooler:
      pooled = jnp.tanh(self.pooler(pooled))
    out = {'hidden': hidden, 'pooled': pooled}
    if cfg.is_decoder and self.lm_logits:
      if cfg.tie_embeddings:
        out['logits'] = precision.einsum('btd,vd->btv', hidden,
                                         self.tokens.embedding)
      else:
        out['logits'] = self.lm_head(hidden)
    return out
