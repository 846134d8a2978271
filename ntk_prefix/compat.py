"""The JAX APIs whose place or name differs across the versions setup.py
admits (jax 0.9-0.10 on Python 3.10-3.11, up to 0.12 on Python >= 3.12):
imported here alone, so a difference is handled in one place."""
import jax
from jax.sharding import AxisType  # jax >= 0.6; make_mesh's axis_types


def pallas_gpu_attention():
  """The Pallas flash-attention module (jax.experimental.pallas.ops.gpu)."""
  try:
    from jax.experimental.pallas.ops.gpu import attention
  except ImportError as e:  # moved or absent in this jax
    raise ImportError(
        f'model.attention_impl=pallas needs jax.experimental.pallas.ops.gpu.'
        f'attention, which jax {jax.__version__} does not have ({e}); use '
        'attention_impl=xla or cudnn.') from e
  return attention


__all__ = ['AxisType', 'pallas_gpu_attention']
