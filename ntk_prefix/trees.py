"""Nested dicts <-> flat {'a/b/c': leaf} dicts: the path names that
checkpoints, exports and sharding rules use."""


def unflatten(flat: dict) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree = {}
  for path, value in flat.items():
    node = tree
    parts = path.split('/')
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': x}} -> {'a/b': x} (non-dict values are leaves)."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, path + '/'))
    else:
      out[path] = value
  return out
