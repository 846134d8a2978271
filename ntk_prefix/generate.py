r"""Decoding with a KV cache and the method's state: greedy, sampling, beams.

  python -m ntk_prefix.generate --workdir=DIR --prompt "Question: ..." \
      [--max_new_tokens=64] [--temperature=0.7 --top_p=0.9] [--beams=4]

The prompt (left-padded) fills the first cache slots in one prefill call,
which also computes each layer's method hook once (prefix keys/values, NTK
state, IAPT/LoPA prompts); every later call feeds one token per row. The
logits equal a full forward pass over the same sequence (tests/test_generate).
"""
import argparse
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix.models import decoding
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.transformer import Transformer


def init_cache(cfg: ModelConfig, batch: int, slots: int,
               dtype=jnp.float32) -> dict:
  """One k and one v array per layer, so a (donated) step writes its token
  in place: a stacked cache was sliced and restacked every token."""
  shape = (batch, slots, cfg.num_kv_heads, cfg.head_dim)
  per_layer = lambda: tuple(jnp.zeros(shape, dtype)
                            for _ in range(cfg.num_layers))
  return {'k': per_layer(), 'v': per_layer(),
          'mask': jnp.zeros((batch, slots), jnp.int32),
          'index': jnp.zeros((), jnp.int32),
          'count': jnp.zeros((batch,), jnp.int32)}


class Decoder:
  """Jitted prefill and one-token steps for a decoder plus a method."""

  def __init__(self, cfg: ModelConfig, frozen_params: Any, method,
               method_params: Any):
    if not cfg.is_decoder:
      raise ValueError(f'{cfg.family} is not a decoder: nothing to generate.')
    self.cfg, self.method = cfg, method
    self.method_params = method_params
    module = Transformer(cfg, method)
    # An argument, not a closure: closed-over weights would be baked into
    # the compiled program as constants (slow to compile, twice the memory).
    self._params = {'params': method.backbone_params(frozen_params,
                                                     method_params)}

    def run(params, method_params, inputs, cache, hooks):
      return module.apply(params, method_params, inputs, cache, hooks,
                          method=decoding.decode)

    # The cache is donated: each call gets the cache the last one returned.
    self._prefill = jax.jit(functools.partial(run, hooks=None),
                            donate_argnums=(3,))
    self._step = jax.jit(run, donate_argnums=(3,))
    # Cache slots the method's input prompt takes (prompt tuning, LoPA).
    hidden = cfg.hidden_size
    prompt = jax.eval_shape(lambda: method.input_hook(
        method_params, jnp.zeros((1, 1, hidden)),
        lambda: jnp.zeros((1, hidden)), False, None).prompt)
    self.soft_tokens = 0 if prompt is None else prompt.shape[1]

  def prefill(self, input_ids, attention_mask, max_new_tokens: int,
              prompt_mask=None) -> tuple:
    b, t = np.shape(input_ids)
    slots = self.soft_tokens + t + max_new_tokens
    if self.cfg.rope_theta is None:
      need = slots + self.method.position_offset()
      if need > self.cfg.max_input_tokens:
        raise ValueError(
            f'{t} prompt tokens + max_new_tokens={max_new_tokens} need {need} '
            f'positions; the model has {self.cfg.max_input_tokens}. Shorten '
            'the prompt or max_new_tokens.')
    inputs = {'input_ids': jnp.asarray(input_ids, jnp.int32),
              'attention_mask': jnp.asarray(attention_mask, jnp.int32)}
    if prompt_mask is not None:
      inputs['prompt_mask'] = jnp.asarray(prompt_mask, jnp.int32)
    cache = init_cache(self.cfg, b, slots)
    return self._prefill(self._params, self.method_params, inputs, cache)

  def step(self, tokens, cache, hooks) -> tuple:
    return self._step(*self._step_args(tokens, cache, hooks))

  def lower_step(self, tokens, cache, hooks):
    """The one-token step lowered for these shapes (for cost analysis)."""
    return self._step.lower(*self._step_args(tokens, cache, hooks))

  def _step_args(self, tokens, cache, hooks) -> tuple:
    tokens = jnp.asarray(tokens, jnp.int32)[:, None]
    inputs = {'input_ids': tokens, 'attention_mask': jnp.ones_like(tokens)}
    return self._params, self.method_params, inputs, cache, hooks


def _choose(logits, rng, temperature: float, top_p: float):
  if temperature <= 0.0:
    return jnp.argmax(logits, -1)
  logits = logits / temperature
  if top_p < 1.0:  # nucleus: the smallest set of tokens with mass >= top_p
    order = jnp.argsort(-logits, -1)
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(sorted_logits, -1)
    keep = jnp.cumsum(probs, -1) - probs < top_p
    sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
    logits = jnp.full_like(logits, -jnp.inf).at[
        jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
  return jax.random.categorical(rng, logits, -1)


def generate(decoder: Decoder, input_ids, attention_mask, max_new_tokens: int,
             *, temperature: float = 0.0, top_p: float = 1.0,
             rng: Optional[jax.Array] = None, eos_id: Optional[int] = None,
             pad_id: int = 0, prompt_mask=None,
             return_logits: bool = True) -> dict:
  """Greedy (temperature 0) or sampled continuation of left-padded prompts.

  Returns {'tokens' [b, new] (pad after eos), 'logits' [b, new, vocab]: the
  logits each token was chosen from (left out with return_logits=False:
  they grow with batch × length × vocabulary)}.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  logits, cache, hooks = decoder.prefill(input_ids, attention_mask,
                                         max_new_tokens, prompt_mask)
  last = logits[:, -1]
  done = jnp.zeros(last.shape[0], bool)
  tokens, all_logits = [], []
  for i in range(max_new_tokens):
    token = _choose(last, jax.random.fold_in(rng, i), temperature, top_p)
    token = jnp.where(done, pad_id, token)
    tokens.append(token)
    if return_logits:
      all_logits.append(last)
    if eos_id is not None:
      done = done | (token == eos_id)
      if bool(jnp.all(done)):
        break
    if i + 1 < max_new_tokens:
      logits, cache, hooks = decoder.step(token, cache, hooks)
      last = logits[:, -1]
  out = {'tokens': np.asarray(jnp.stack(tokens, 1))}
  if return_logits:
    out['logits'] = np.asarray(jnp.stack(all_logits, 1))
  return out


def beam_search(decoder: Decoder, input_ids, attention_mask,
                max_new_tokens: int, *, beams: int = 4,
                length_penalty: float = 1.0, eos_id: Optional[int] = None,
                pad_id: int = 0, prompt_mask=None) -> dict:
  """Beam search; returns {'tokens' [b, new], 'scores' [b]} of the best beam
  (score: sum of log-probabilities / length ** length_penalty)."""
  b = np.shape(input_ids)[0]
  tile = lambda x: None if x is None else np.repeat(np.asarray(x), beams, 0)
  # Every beam of an example shares its prompt, so the hooks computed at
  # prefill are the same across an example's beams and never need reordering.
  logits, cache, hooks = decoder.prefill(
      tile(input_ids), tile(attention_mask), max_new_tokens,
      tile(prompt_mask))
  logp = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), -1)
  vocab = logp.shape[-1]
  scores = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)[None].repeat(b, 0)
  done = jnp.zeros((b, beams), bool)
  lengths = jnp.zeros((b, beams), jnp.int32)
  history = jnp.zeros((b, beams, 0), jnp.int32)
  for i in range(max_new_tokens):
    logp = logp.reshape(b, beams, vocab)
    if eos_id is not None:  # a finished beam only extends with pad, for free
      frozen = jnp.full((vocab,), -jnp.inf).at[pad_id].set(0.0)
      logp = jnp.where(done[..., None], frozen, logp)
    total = (scores[..., None] + logp).reshape(b, beams * vocab)
    scores, flat = jax.lax.top_k(total, beams)
    parent, token = flat // vocab, flat % vocab
    history = jnp.concatenate(
        [jnp.take_along_axis(history, parent[..., None], 1), token[..., None]],
        -1)
    was_done = jnp.take_along_axis(done, parent, 1)
    lengths = jnp.take_along_axis(lengths, parent, 1) + (~was_done)
    done = was_done | (token == eos_id if eos_id is not None else False)
    if i + 1 == max_new_tokens or bool(jnp.all(done)):
      break
    rows = (jnp.arange(b)[:, None] * beams + parent).reshape(-1)
    cache = dict(cache, k=tuple(k[rows] for k in cache['k']),
                 v=tuple(v[rows] for v in cache['v']))
    logits, cache, hooks = decoder.step(token.reshape(-1), cache, hooks)
    logp = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), -1)
  final = scores / jnp.maximum(lengths, 1) ** length_penalty
  best = jnp.argmax(final, 1)
  tokens = jnp.take_along_axis(history, best[:, None, None], 1)[:, 0]
  return {'tokens': np.asarray(tokens),
          'scores': np.asarray(jnp.take_along_axis(final, best[:, None], 1)[:,
                                                                           0])}


def main(argv=None):
  p = argparse.ArgumentParser(description='Decode with a trained run.')
  p.add_argument('--workdir', required=True,
                 help='a training workdir (uses its best/ export, else final/)')
  p.add_argument('--prompt', action='append', required=True,
                 help='repeat for a batch')
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--temperature', type=float, default=0.0)
  p.add_argument('--top_p', type=float, default=1.0)
  p.add_argument('--beams', type=int, default=1)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  from ntk_prefix import checkpoints, export
  from ntk_prefix.checkpoints.paths import resolve
  config_path = os.path.join(args.workdir, 'config.json')
  if not os.path.exists(config_path):
    raise SystemExit(f'--workdir={args.workdir}: no config.json; point it at '
                     'a folder written by `python -m ntk_prefix.train`.')
  with open(config_path) as f:
    config = json.load(f)
  state = next((os.path.join(args.workdir, d) for d in ('best', 'final')
                if os.path.exists(os.path.join(args.workdir, d,
                                               'method.json'))), None)
  if state is None:
    raise SystemExit(f'--workdir={args.workdir}: no best/ or final/ method '
                     'state yet; train to the end (or to an eval) first.')
  path = resolve(config['model']['path'])
  cfg, frozen, _ = checkpoints.load(path)
  method, method_params = export.load(state, cfg, frozen)
  tokenizer = checkpoints.load_tokenizer(path)
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = 'left'
  batch = tokenizer(args.prompt, padding=True, return_tensors='np')
  decoder = Decoder(cfg, frozen, method, method_params)
  kwargs = dict(eos_id=tokenizer.eos_token_id,
                pad_id=tokenizer.pad_token_id or 0)
  if args.beams > 1:
    out = beam_search(decoder, batch['input_ids'], batch['attention_mask'],
                      args.max_new_tokens, beams=args.beams, **kwargs)
  else:
    out = generate(decoder, batch['input_ids'], batch['attention_mask'],
                   args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, rng=jax.random.PRNGKey(args.seed),
                   **kwargs)
  for prompt, tokens in zip(args.prompt, out['tokens']):
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    print(json.dumps({'prompt': prompt, 'completion': text}))


if __name__ == '__main__':
  main()
