"""Task heads trained alongside every method (as in the papers): the
training code keeps one in trainable['head'], beside trainable['method'],
so it is differentiated and counted with the method state."""
import jax
import jax.numpy as jnp

from ntk_prefix.models.config import ModelConfig


def init_classifier_head(rng: jax.Array, cfg: ModelConfig,
                         num_labels: int) -> dict:
  """{'out': {kernel, bias}}, plus a tanh 'dense' layer for RoBERTa (as HF)."""
  std = 0.02
  k1, k2 = jax.random.split(rng)
  h = cfg.hidden_size
  head = {'out': {'kernel': std * jax.random.normal(k1, (h, num_labels)),
                  'bias': jnp.zeros((num_labels,))}}
  if cfg.family == 'roberta':
    head['dense'] = {'kernel': std * jax.random.normal(k2, (h, h)),
                     'bias': jnp.zeros((h,))}
  return head


def classifier_logits(head: dict, pooled: jax.Array) -> jax.Array:
  x = pooled
  if 'dense' in head:
    x = jnp.tanh(x @ head['dense']['kernel'].astype(x.dtype) +
                 head['dense']['bias'].astype(x.dtype))
  return (x @ head['out']['kernel'].astype(x.dtype) +
          head['out']['bias'].astype(x.dtype)).astype(jnp.float32)
