"""Fused attention kernels that also give their log-sum-exp.

`model.attention_impl` picks how the softmax over the input keys (and any
explicit prefix rows) is computed:

  xla     the einsum path of `attention.attend` (the reference; CPU default)
  cudnn   cuDNN flash attention through `jax.nn.dot_product_attention`
          (GPU, bfloat16/float16 operands)
  pallas  the Pallas flash-attention kernel of `jax.experimental.pallas.ops.gpu`
          (Triton on GPU; interpret mode on CPU, which is how tests run it)
  auto    cudnn on a GPU for 16-bit operands, else xla

NTK-Attention's term joins a kernel's output through its log-sum-exp. The
kernels give that lse without a gradient, so `with_lse` wraps a kernel in a
custom VJP that is exact: d lse_i / d s_ij = p_ij, hence
  dq_i += scale * dlse_i * sum_j p_ij k_j   (the kernel on values k)
  dk_j += scale * sum_i p_ij dlse_i q_i     (the kernel's value-gradient)
both computed by the kernel itself, so nothing of size q x k is stored.
"""
import functools
import math

import jax
import jax.numpy as jnp

from ntk_prefix import compat

Array = jax.Array
IMPLS = ('xla', 'cudnn', 'pallas', 'auto')


def resolve(impl: str, dtype) -> str:
  """'auto' -> the implementation for this platform and operand dtype."""
  if impl not in IMPLS:
    raise ValueError(f'model.attention_impl={impl!r} is not one of {IMPLS}.')
  if impl != 'auto':
    return impl
  gpu = jax.default_backend() == 'gpu'
  return 'cudnn' if gpu and jnp.dtype(dtype).itemsize == 2 else 'xla'


def _cudnn(q, k, v, key_valid, causal, lse: bool):
  """o, or (o, lse [b, q, heads]), by cuDNN; the queries are the last q
  of the keys."""
  t, s = q.shape[1], k.shape[1]
  mask = key_valid[:, None, None, :]
  if causal:
    mask = mask & (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + s - t)
  return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                      implementation='cudnn',
                                      return_residual=lse)


def _pallas(q, k, v, key_valid, causal, lse: bool, block: int = 128):
  """o, or (o, lse), by the Pallas flash kernel. Its masks are segment ids and a
  causal mask aligned at the first row, so the queries are padded in front
  to the key length (query i then sees the prefix and keys <= i) and the
  keys at the end to a multiple of the block; a key is seen by queries of
  its segment: 1 for real keys, 0 for padding."""
  pallas_attention = compat.pallas_gpu_attention()
  b, t, heads, d = q.shape
  s = k.shape[1]
  groups = heads // k.shape[2]
  size = min(block, max(16, 1 << (s - 1).bit_length()))
  total = -(-s // size) * size
  q = jnp.pad(q, ((0, 0), (s - t, total - s), (0, 0), (0, 0)))
  k, v = (jnp.pad(jnp.repeat(x, groups, axis=2),
                  ((0, 0), (0, total - s), (0, 0), (0, 0))) for x in (k, v))
  segments = jnp.pad(key_valid.astype(jnp.int32), ((0, 0), (0, total - s)))
  sizes = pallas_attention.BlockSizes(size, size, size, size, size, size)
  # The kernel differentiates o only when it returns no lse.
  out = pallas_attention.mha(
      q, k, v, segments, sm_scale=d ** -0.5, causal=causal,
      block_sizes=sizes, interpret=jax.default_backend() == 'cpu',
      return_residuals=lse)
  if not lse:
    return out[:, s - t:s]
  o, lse2 = out  # the kernel's lse is in base 2 (it computes with exp2)
  lse2 = jnp.transpose(jnp.reshape(lse2, (b, heads, total)), (0, 2, 1))
  return o[:, s - t:s], lse2[:, s - t:s] * math.log(2.0)


KERNELS = {'cudnn': _cudnn, 'pallas': _pallas}


def attention(q: Array, k: Array, v: Array, key_valid: Array, causal: bool,
              impl: str) -> Array:
  """[b, q, heads, d] attention of q over k, v ([b, s, kv_heads, d]), keys
  valid where key_valid [b, s]; gradients are the kernel's own."""
  return KERNELS[impl](q, k, v, key_valid, causal, False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def with_lse(q, k, v, key_valid, causal, impl):
  """(o, lse): as `attention`, plus lse [b, q, heads] (float32) with its
  exact gradient."""
  o, lse = KERNELS[impl](q, k, v, key_valid, causal, True)
  return o, lse.astype(jnp.float32)


def _with_lse_fwd(q, k, v, key_valid, causal, impl):
  return with_lse(q, k, v, key_valid, causal, impl), (q, k, v, key_valid)


def _with_lse_bwd(causal, impl, residuals, cotangents):
  q, k, v, key_valid = residuals
  d_o, d_lse = cotangents
  kernel = lambda q, k, v: attention(q, k, v, key_valid, causal, impl)
  _, vjp = jax.vjp(kernel, q, k, v)
  d_q, d_k, d_v = vjp(d_o.astype(q.dtype))
  scaled = (d_lse * q.shape[-1] ** -0.5)[..., None]  # [b, q, heads, 1]
  # sum_j p_ij k_j: the kernel with k as its values (k has kv_heads heads).
  d_q = d_q + (scaled * kernel(q, k, k).astype(jnp.float32)).astype(q.dtype)
  d_k = d_k + vjp((scaled * q.astype(jnp.float32)).astype(q.dtype))[2]
  return d_q, d_k, d_v, None


with_lse.defvjp(_with_lse_fwd, _with_lse_bwd)
