"""The empirical neural tangent kernel with respect to a method pytree only.

K[i, j] = <d f(x_i) / d theta, d f(x_j) / d theta>, summed over the leaves of
theta (the method's trainable state; the frozen model is a constant of f).
Per-example gradients are taken in chunks with `vmap(grad)`; the chunks'
Jacobians are kept while they fit in `max_bytes`, else recomputed, so memory
is bounded by two chunks however many examples and parameters there are.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def empirical_ntk(fn: Callable[[Any, Any], Array], params: Any, inputs: Any,
                  *, chunk: int = 16, max_bytes: int = 1 << 30) -> np.ndarray:
  """The [n, n] kernel of the scalar outputs fn(params, inputs) -> [n].

  fn must treat examples independently (no batch statistics); `inputs` is a
  pytree whose leaves share the leading axis n.
  """
  n = jax.tree.leaves(inputs)[0].shape[0]
  size = sum(x.size for x in jax.tree.leaves(params))
  starts = list(range(0, n, chunk))

  def one(p, x):  # the scalar output of a single example
    return fn(p, jax.tree.map(lambda a: a[None], x))[0]

  @jax.jit
  def jacobian(x_chunk):  # [c, P] flattened per-example gradients
    grads = jax.vmap(jax.grad(one), in_axes=(None, 0))(params, x_chunk)
    return jnp.concatenate([g.reshape(g.shape[0], -1)
                            for g in jax.tree.leaves(grads)], axis=1)

  def take(i):
    return jax.tree.map(lambda a: a[starts[i]:starts[i] + chunk], inputs)

  keep = n * size * 4 <= max_bytes
  cache = {}

  def jac(i):
    if i in cache:
      return cache[i]
    j = jacobian(take(i))
    if keep:
      cache[i] = j
    return j

  kernel = np.zeros((n, n), np.float64)
  for a in range(len(starts)):
    ja = jac(a)
    for b in range(a + 1):
      block = np.asarray(ja @ jac(b).T, np.float64)
      sa, sb = starts[a], starts[b]
      kernel[sa:sa + block.shape[0], sb:sb + block.shape[1]] = block
      kernel[sb:sb + block.shape[1], sa:sa + block.shape[0]] = block.T
  return kernel


def eigenspectrum(kernel: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric kernel, largest first."""
  return np.linalg.eigvalsh(0.5 * (kernel + kernel.T))[::-1]


def kernel_drift(kernel_t: np.ndarray, kernel_0: np.ndarray) -> float:
  """||K_t - K_0||_F / ||K_0||_F: zero in the lazy (NTK) regime."""
  return float(np.linalg.norm(kernel_t - kernel_0) / np.linalg.norm(kernel_0))


def model_output_fn(cfg, frozen_params, adapter, output: str = 'margin'):
  """fn(method_params, inputs) -> [n] scalar outputs of one of our models.

  output 'margin': class logit 1 minus class logit 0 (the argument is then
  {'method': method state, 'head': task head}); 'last_logprob': a decoder's log-probability of each sequence's
  last token given the rest. The frozen model is closed over: the kernel is
  taken over the method's state alone.
  """
  from ntk_prefix import models

  def fn(params, inputs):
    method_params = params['method'] if output == 'margin' else params
    out = models.apply(cfg, frozen_params, method_params, inputs,
                       adapter=adapter, lm_logits=output == 'last_logprob')
    if output == 'margin':
      logits = models.classifier_logits(params['head'], out['pooled'])
      return logits[:, 1] - logits[:, 0]
    if output == 'last_logprob':
      mask = inputs['attention_mask']
      last = jnp.sum(mask, axis=1) - 1  # right padding
      logp = jax.nn.log_softmax(out['logits'].astype(jnp.float32), -1)
      prev = jnp.take_along_axis(logp, (last - 1)[:, None, None], 1)[:, 0]
      target = jnp.take_along_axis(inputs['input_ids'], last[:, None], 1)
      return jnp.take_along_axis(prev, target, 1)[:, 0]
    raise ValueError(f"output={output!r}; expected 'margin' or "
                     "'last_logprob'.")
  return fn
