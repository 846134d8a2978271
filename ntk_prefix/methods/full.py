"""Full fine-tuning, as a baseline: the whole backbone is the method state.

The frozen tree is then unused by the forward pass; the method state starts
as a copy of it, so step 0 is exactly the pretrained model.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ntk_prefix.methods import base


@dataclasses.dataclass(frozen=True)
class Options:
  pass


@dataclasses.dataclass(frozen=True)
class Full(base.Method):
  name = 'full'
  order = 70  # place in tables and listings
  weight_space = True
  # Full fine-tuning needs ~100x smaller steps than a prefix.
  lr_grid = (1e-5, 3e-5, 1e-4, 3e-4)
  decoder_lr_grid = (3e-6, 1e-5, 3e-5, 1e-4)  # one step lower on the decoder
  Options = Options

  def init(self, rng, frozen_params=None, tokenizer=None):
    if frozen_params is None:
      raise base.MethodError('full fine-tuning starts from the frozen params; '
                             'pass them to init.')
    return {'backbone': jax.tree.map(lambda x: jnp.array(x, jnp.float32),
                                     frozen_params)}

  def backbone_params(self, frozen_params, method_params):
    # Float32 master weights, computed in the frozen tree's dtype: under
    # model.dtype=bfloat16 full fine-tuning multiplies in bf16 as the
    # other methods' backbones do (and as mixed-precision training does).
    dtype = jax.tree.leaves(frozen_params)[0].dtype
    return jax.tree.map(lambda x: x.astype(dtype), method_params['backbone'])
