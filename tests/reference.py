"""Independent NumPy (float64) references, written from the equations."""
import numpy as np


def elu_phi(x):
  d = x.shape[-1]
  x = x / d ** 0.25
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1.0


def attention(q, k, v, key_mask=None, causal=False, prefix_k=None,
              prefix_v=None, ntk_z=None, ntk_k=None):
  """Loop-level reference: q [b, t, h, d], k/v [b, s, kv, d]; prefix
  [1 or b, m, kv, d]; ntk_z [h, d, d], ntk_k [h, d] (elu feature map)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, d = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for hi in range(h):
      kh = hi // g
      for i in range(t):
        qi = q[bi, i, hi]
        logits = k[bi, :, kh] @ qi / np.sqrt(d)
        valid = np.ones(s, bool) if key_mask is None else key_mask[bi] > 0
        if causal:
          valid &= np.arange(s) <= i + (s - t)
        keys_v = [v[bi, :, kh][valid]]
        all_logits = [logits[valid]]
        if prefix_k is not None:
          pb = min(bi, prefix_k.shape[0] - 1)
          all_logits.append(np.asarray(prefix_k[pb, :, kh], np.float64) @ qi /
                            np.sqrt(d))
          keys_v.append(np.asarray(prefix_v[pb, :, kh], np.float64))
        lg = np.concatenate(all_logits)
        vv = np.concatenate(keys_v)
        shift = lg.max() if lg.size else 0.0
        w = np.exp(lg - shift)
        num, den = w @ vv, w.sum()
        if ntk_z is not None:
          phi = elu_phi(qi)
          num = num + np.exp(-shift) * phi @ np.asarray(ntk_z[hi], np.float64)
          den = den + np.exp(-shift) * phi @ np.abs(
              np.asarray(ntk_k[hi], np.float64))
        out[bi, i, hi] = num / den if den > 0 else 0.0
  return out
