"""What a method may hand to a layer: the hook types (see models/hooks.py,
the one module methods import)."""
from typing import Any, Callable, NamedTuple, Optional

import jax

Array = jax.Array


class LoraDelta(NamedTuple):
  """Low-rank update of one projection: y += scale * (x @ a) @ b."""
  a: Array  # [in, rank]
  b: Array  # [rank, out]
  scale: float


class NtkState(NamedTuple):
  """NTK-Attention state of one layer: the infinite prefix summarised.

  All fields are arrays (so hooks pass through jit, remat and vmap); the
  feature map is `features.feature_map(q, projection)`.
  """
  z: Array  # [heads, features, head_dim], or [batch, ...] one per row
  k: Array  # [heads, features], or [batch, heads, features]
  # None: phi(q) = elu(q / head_dim**0.25) + 1 (the paper). Else fixed random
  # projections [features, head_dim] of positive random features.
  projection: Optional[Array] = None
  # Dropout on phi(q), drawn by the method: [batch, q_len, heads, features],
  # already scaled by 1 / keep_prob. None: no dropout.
  phi_mask: Optional[Array] = None


class LayerHook(NamedTuple):
  """Everything a method may add to one transformer layer (all optional)."""
  # Explicit key/value prefix, already in the layer's key space (post-RoPE).
  prefix_k: Optional[Array] = None  # [batch or 1, m, kv_heads, head_dim]
  prefix_v: Optional[Array] = None  # [batch or 1, m, kv_heads, head_dim]
  # Hidden-state tokens inserted at this layer (IAPT); the layer projects them
  # through its own (frozen) norm and key/value maps, and they are discarded
  # after the layer, which is the same as prepending and dropping them.
  prefix_hidden: Optional[Array] = None  # [batch or 1, n, hidden]
  ntk: Optional[NtkState] = None
  # Projection name ('query', 'key', 'value', 'out') -> low-rank delta.
  lora: Optional[dict] = None


class InputHook(NamedTuple):
  """What a method adds at the input embeddings (prompt tuning, LoPA)."""
  prompt: Optional[Array] = None  # [batch or 1, n, hidden] soft tokens


NO_LAYER_HOOK = LayerHook()
NO_INPUT_HOOK = InputHook()


class Adapter:
  """The protocol a model calls; `methods.base.Method` implements it.

  Kept here (and trivial) so models can type their argument without
  importing methods.
  """

  # Whether the state a method adds is computed from each example's input
  # (LoPA, IAPT): a packed row holds several examples, so such a method
  # cannot train on packed rows.
  per_example = False

  # Positions the input starts at: prefix methods that imitate HF's
  # `past_key_values` shift input positions by the prefix length.
  def position_offset(self) -> int:
    return 0

  def input_hook(self, method_params: Any, embeddings: Array,
                 instance_embedding: Callable[[], Array], train: bool,
                 rng: Optional[Array]) -> InputHook:
    return NO_INPUT_HOOK

  def layer_hook(self, method_params: Any, layer: int, hidden: Array,
                 mask: Array, train: bool,
                 rng: Optional[Array]) -> LayerHook:
    return NO_LAYER_HOOK

  def backbone_params(self, frozen_params: Any, method_params: Any) -> Any:
    return frozen_params

  # Every leaf of `layer_state` is stacked [layers, ...]: unrolled layers
  # then get it split once per forward pass, scanned layers their slice as
  # the scan's input, so its gradient is one concatenation (indexing the
  # stack in each layer makes autodiff pad every layer's gradient to the
  # whole stack and sum the copies: on SmolLM2, NTK-Attention's 30 x 4.4 MB).
  layer_stacked = False

  def layer_state(self, method_params: Any) -> Any:
    """What every layer's hook reads, made once per forward pass from
    method_params (Prefix-Tuning: its MLP's output); every caller of
    `layer_hook` passes this, never method_params."""
    return method_params


NO_ADAPTER = Adapter()
