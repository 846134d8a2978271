"""Pure-functional transformers: `apply(cfg, frozen_params, method_params, inputs)`."""
from typing import Any, Optional

import jax

from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.heads import classifier_logits, init_classifier_head
from ntk_prefix.models.hook_types import NO_ADAPTER, Adapter
from ntk_prefix.models.scanned import stack_layers, unstack_layers
from ntk_prefix.models.transformer import Transformer


def apply(cfg: ModelConfig, frozen_params: Any, method_params: Any,
          inputs: dict, *, adapter: Adapter = NO_ADAPTER, train: bool = False,
          rng: Optional[jax.Array] = None, remat: str = '',
          lm_logits: bool = True, attention_impl: str = 'xla',
          scan_layers: bool = False) -> dict:
  """Forward pass. `method_params` is the method's pytree ({} for none).
  With scan_layers the layers' params may come stacked (`stack_layers`,
  done once where the frozen params are placed) or per layer."""
  params = adapter.backbone_params(frozen_params, method_params)
  if scan_layers:
    params = stack_layers(params, cfg.num_layers)
  module = Transformer(cfg, adapter, remat=remat, lm_logits=lm_logits,
                       attention_impl=attention_impl, scan_layers=scan_layers)
  return module.apply({'params': params}, method_params, inputs, train, rng)


def init_params(cfg: ModelConfig, rng: jax.Array, inputs: dict) -> Any:
  """Random parameters of the right structure (for tests and shape checks)."""
  return Transformer(cfg).init(rng, {}, inputs)['params']


def param_shapes(cfg: ModelConfig) -> Any:
  """The parameter tree as ShapeDtypeStructs, without allocating."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0),
                                            dummy_inputs(cfg)))


def dummy_inputs(cfg: ModelConfig, batch: int = 1, length: int = 4) -> dict:
  import jax.numpy as jnp
  if cfg.is_vision:
    return {'pixel_values': jnp.zeros((batch, cfg.num_channels, cfg.image_size,
                                       cfg.image_size))}
  return {'input_ids': jnp.zeros((batch, length), jnp.int32),
          'attention_mask': jnp.ones((batch, length), jnp.int32)}


__all__ = ['ModelConfig', 'Adapter', 'NO_ADAPTER', 'Transformer', 'apply',
           'init_params', 'param_shapes', 'dummy_inputs',
           'init_classifier_head', 'classifier_logits', 'stack_layers',
           'unstack_layers']
