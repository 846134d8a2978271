"""What every method shares: options parsing, parameter checks, counting."""
import dataclasses
import difflib
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix.models.hooks import Adapter, ModelConfig, layer_key_values

Array = jax.Array


class MethodError(ValueError):
  """Bad method name, option, or method state."""


@dataclasses.dataclass(frozen=True)
class Preset:
  """Named option values and where they come from (`method.preset`).

  `per_task` adds options for one task (e.g. an official script's prefix
  length for RTE); `differs` says where this codebase does not, or cannot,
  follow the source; `needs_tokenizer`: the preset starts from words, so a
  model without a vocabulary (a ViT) cannot run it.
  """
  options: dict
  source: str
  per_task: dict = dataclasses.field(default_factory=dict)
  differs: str = ''
  needs_tokenizer: bool = False

  def resolve(self, task: str = '') -> dict:
    return {**self.options, **self.per_task.get(task, {})}


def near(name: str, options) -> str:
  close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
  return f' Did you mean {close}?' if close else ''


def parse_options(cls, values: dict, where: str):
  """Options dataclass from a dict, naming unknown keys and their neighbours."""
  fields = {f.name for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      raise MethodError(f'{where}.{key} is not an option of this method.'
                        f'{near(key, fields)} Allowed: {sorted(fields)}.')
  kwargs = {}
  for key, value in values.items():
    kwargs[key] = tuple(value) if isinstance(value, list) else value
  return cls(**kwargs)


def require(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise MethodError(f'{field}={value!r} is not allowed: {allowed}.')


@dataclasses.dataclass(frozen=True)
class Method(Adapter):
  """A training method: a pytree of trainable state plus where it enters.

  Subclasses set `name` and `Options`, and implement `init` and the hooks of
  `models.hooks.Adapter` they need. A task head is the training code's
  (trainable['head']): methods never see it.
  """
  model: ModelConfig
  opts: Any
  name: ClassVar[str] = ''
  Options: ClassVar[type] = None
  # Names of state leaves that are vectors (per layer or head), which weight
  # decay must not shrink; biases and norm scales are never decayed anyway.
  no_decay: ClassVar[tuple] = ()
  presets: ClassVar[dict] = {}  # name -> Preset
  # option -> the defaults it had before (oldest first). Under a preset, a
  # config's option equal to its default means "the preset's value", and a
  # run recorded before a default changed holds the old one there.
  former_defaults: ClassVar[dict] = {}
  # The option holding the length of an explicit key/value prefix, for the
  # methods that attend to one ('' otherwise): length sweeps, compression.
  prefix_length_option: ClassVar[str] = ''
  # Its state stands for an explicit prefix of any length (m = infinity):
  # a prefix-length sweep draws it as the limit, and compression fits it to
  # a trained prefix.
  summarises_prefix: ClassVar[bool] = False
  # It changes the model's weights, not its tokens or attention: a
  # reference line beside the prefix methods in a prefix-length sweep.
  weight_space: ClassVar[bool] = False
  # What the rest of the codebase reads off a method (nothing lists methods
  # by name): its place in tables and listings, its default 4-point
  # learning-rate grid (the tables search its middle two first and extend
  # outward), whether rows of a mixed batch may each hold its state
  # (methods/mixed.py), and the Hugging Face PEFT type its state maps to.
  order: ClassVar[int] = 100
  lr_grid: ClassVar[tuple] = (1e-3, 3e-3, 1e-2, 3e-2)
  # The decoder table's grid where it differs from lr_grid.
  decoder_lr_grid: ClassVar[tuple] = ()
  mixable: ClassVar[bool] = False
  # False for the baseline that adapts nothing (the frozen model + head).
  adapts: ClassVar[bool] = True
  peft_type: ClassVar[str] = ''
  # A PEFT folder of peft_type loads as this method (one per type).
  peft_imports: ClassVar[bool] = False
  # The PEFT configuration the peer benchmark sets against this method:
  # (PEFT type, PEFT's arguments, our options for the same adapter).
  peft_peer: ClassVar[tuple] = ()

  def explicit_prefix(self, method_params) -> Optional[dict]:
    """{'k', 'v'} [layers, m, kv_heads, head_dim] of the explicit prefix
    in each layer's key space, or None for methods without one."""
    return None

  @classmethod
  def resolve_options(cls, opts, tokenizer):
    """Options that need the tokenizer to be known (default: as given)."""
    return opts

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raise MethodError for options that do not fit the model."""

  def init(self, rng: Array, frozen_params: Any = None,
           tokenizer: Any = None) -> dict:
    raise NotImplementedError

  def field(self, key: str) -> str:
    return f'method.{self.name}.{key}'

  def dropout(self, x: Array, rate: float, train: bool,
              rng: Optional[Array]) -> Array:
    if not train or rate == 0.0 or rng is None:
      return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)

  def state_shapes(self, frozen_params: Any = None) -> dict:
    """The shapes (jax.ShapeDtypeStruct) of the state `init` returns; a
    method whose init needs more than the model (a tokenizer) says them
    without it, so a saved state loads where that is absent."""
    return jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0),
                                            frozen_params))

  def check_params(self, method_params: dict, frozen_params: Any = None) -> None:
    """Clear error when a method state does not fit this model."""
    expected = self.state_shapes(frozen_params)
    got = dict(method_params)
    exp_flat = dict(_flat(expected))
    got_flat = dict(_flat(got))
    if set(exp_flat) != set(got_flat):
      raise MethodError(
          f'{self.name} state has entries {sorted(got_flat)} but this model '
          f'expects {sorted(exp_flat)}.')
    for path, spec in exp_flat.items():
      if tuple(got_flat[path].shape) != tuple(spec.shape):
        raise MethodError(
            f'{self.name} state {path!r} has shape '
            f'{tuple(got_flat[path].shape)}, but the model '
            f'{self.model.dimensions()} needs {tuple(spec.shape)}: the state '
            'was trained on a model of other dimensions.')


def _flat(tree, prefix=''):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    yield prefix + '/'.join(str(getattr(p, 'key', p)) for p in path), leaf


def count_params(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def word_prefix(model_cfg: ModelConfig, frozen_params: Any, tokenizer: Any,
                text: str, length: int) -> tuple:
  """Keys/values [layers, length, kv_heads, head_dim] of a real text.

  The text's tokens (special tokens dropped) are repeated to fill `length`.
  """
  if tokenizer is None or frozen_params is None:
    raise MethodError('Initialising a prefix from words needs the frozen '
                      'model and its tokenizer.')
  ids = tokenizer(text, add_special_tokens=False)['input_ids']
  if not ids:
    raise MethodError(f'init_text={text!r} has no tokens.')
  ids = (ids * (length // len(ids) + 1))[:length]
  inputs = {'input_ids': jnp.asarray([ids], jnp.int32),
            'attention_mask': jnp.ones((1, length), jnp.int32)}
  kv = layer_key_values(model_cfg, frozen_params, inputs)
  k = jnp.stack([k[0] for k, _ in kv])
  v = jnp.stack([v[0] for _, v in kv])
  return k, v
