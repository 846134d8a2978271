"""The orbax checkpoints of a run's workdir: the trainable state, the
optimizer state, the step and the RNG (never the frozen model). A checkpoint
whose shapes do not fit the state is an error, never a silent fresh start;
only an unreadable (corrupt) one falls back to an older one."""
import os
import sys
from typing import Optional


class WorkdirError(RuntimeError):
  """A workdir that holds another run, or one that is in use."""


def checkpoint_manager(workdir: str, config):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.max_to_keep,
      enable_async_checkpointing=config.async_checkpoints)
  # The handler up front, so item_metadata reads shapes before any restore.
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options,
      item_handlers=ocp.StandardCheckpointHandler())


def _shape_mismatch(manager, step: int, abstract_state) -> Optional[str]:
  """A description of the entries whose saved shape differs from the
  state's, or None (also None when the metadata cannot be read)."""
  try:
    meta = manager.item_metadata(step)
  except Exception:  # unreadable metadata: corruption, handled by restore
    return None
  meta = getattr(meta, 'tree', meta)
  if isinstance(meta, dict) and 'method_params' in meta:  # before 2026-11-30
    return ('it holds the layout of an older ntk_prefix (the method state '
            'with the task head inside, "method_params"; now "trainable" '
            'holds {method, head}): finish it with that version, or start a '
            'new --workdir')
  if not isinstance(meta, dict) or 'trainable' not in meta:
    return None
  # The trainable state decides fit; the optimizer state mirrors it (and
  # orbax spells its named tuples differently).
  saved = flat_shapes(meta['trainable'])
  wanted = flat_shapes(abstract_state['trainable'])
  if not saved:
    return None
  differ = [f'{k}: saved {saved.get(k, "absent")}, now '
            f'{wanted.get(k, "absent")}'
            for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)]
  return '; '.join(differ[:6]) if differ else None


def flat_shapes(tree) -> dict:
  import jax
  out = {}
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  for path, leaf in leaves:
    key = '/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)
    shape = getattr(leaf, 'shape', None)
    out[key] = None if shape is None else tuple(shape)
  return out


def restore_latest(manager, abstract_state, workdir: str):
  """(step, state) of the newest readable checkpoint, or (None, None).

  A checkpoint whose shapes do not fit `abstract_state` is an error (a run
  of another config); an unreadable one falls back to an older one.
  """
  import orbax.checkpoint as ocp
  for step in sorted(manager.all_steps(), reverse=True):
    mismatch = _shape_mismatch(manager, step, abstract_state)
    if mismatch:
      raise WorkdirError(
          f'{workdir}/checkpoints/{step} does not fit this run\'s state '
          f'({mismatch}). It was written by a run of another method or '
          'model: use a new --workdir.')
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(
          abstract_state))
      return step, state
    except Exception as e:  # truncated or corrupt: try the previous one
      print(f'checkpoint {step} is unreadable ({type(e).__name__}: '
            f'{str(e)[:200]}); trying an earlier one', file=sys.stderr)
  return None, None
