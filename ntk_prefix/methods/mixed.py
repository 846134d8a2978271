"""Mixed batches: one forward pass in which each row uses its own adapter.

Several states of one method (same options, so same shapes), stacked along a
leading axis, and an adapter index per row:

  mixed = Mixed(method)
  params = {'adapters': mixed.stack([state_a, state_b, state_c]),
            'row_adapter': jnp.array([2, 0, 0, 1])}
  models.apply(cfg, frozen, params, inputs, adapter=mixed)

For methods whose contribution is a prefix (Prefix-Tuning, P-Tuning v2), NTK
state (NTK-Attention) or an input prompt (prompt tuning): every adapter's
hook is computed once per layer (cheap: it does not depend on the row), and
each row picks its own; attention takes per-row prefixes and NTK state.
"""
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from ntk_prefix.methods import MIXABLE
from ntk_prefix.methods.base import Method, MethodError
from ntk_prefix.models.hooks import Adapter, InputHook, LayerHook, NtkState



def _pick(x, rows):
  """[A, 1 or b, ...] per-adapter pieces -> [b, ...] by row."""
  if x is None:
    return None
  return x[rows, 0] if x.shape[1] == 1 else x[rows, jnp.arange(rows.shape[0])]


@dataclasses.dataclass(frozen=True)
class Mixed(Adapter):
  method: Method
  per_example = True  # each row its own adapter

  def __post_init__(self):
    if not self.method.mixable:
      raise MethodError(f'Mixed batches take one of {MIXABLE} (methods with '
                        f'mixable = True); got {self.method.name!r}.')

  @staticmethod
  def stack(states: Sequence[dict]) -> dict:
    return jax.tree.map(lambda *x: jnp.stack(x), *states)

  def position_offset(self) -> int:
    return self.method.position_offset()

  def input_hook(self, method_params, embeddings, instance_embedding, train,
                 rng):
    rows = method_params['row_adapter']
    hooks = jax.vmap(lambda p: self.method.input_hook(
        p, embeddings, instance_embedding, False, None))(
            method_params['adapters'])
    return InputHook(prompt=_pick(hooks.prompt, rows))

  def layer_state(self, method_params):
    return {'row_adapter': method_params['row_adapter'],
            'adapters': jax.vmap(self.method.layer_state)(
                method_params['adapters'])}

  def layer_hook(self, layer_state, layer, hidden, mask, train, rng):
    rows = layer_state['row_adapter']
    hooks = jax.vmap(lambda s: self.method.layer_hook(
        s, layer, hidden, mask, False, None))(layer_state['adapters'])
    ntk = None
    if hooks.ntk is not None:  # per-row state [b, heads, features, ...]
      projection = (None if hooks.ntk.projection is None else
                    hooks.ntk.projection[0])
      ntk = NtkState(z=hooks.ntk.z[rows], k=hooks.ntk.k[rows],
                     projection=projection)
    return LayerHook(prefix_k=_pick(hooks.prefix_k, rows),
                     prefix_v=_pick(hooks.prefix_v, rows), ntk=ntk)
