"""The layering the README documents, read from the source (imports inside
functions count): methods reach models only through models.hooks, models
never import a method or the training code, and no module imports itself
through others."""
import ast
import os

from conftest import REPO

PACKAGES = ('ntk_prefix', 'experiments', 'benchmarks')


def _modules() -> dict:
  mods = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(REPO, package)):
      for f in files:
        if f.endswith('.py'):
          path = os.path.join(folder, f)
          name = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
          mods[name.removesuffix('.__init__')] = path
  return mods


def _imports(mods: dict) -> dict:
  """module -> the project modules it imports (anywhere in its body)."""
  def resolve(name):
    while name and name not in mods:
      name = name.rpartition('.')[0]
    return name

  edges = {}
  for name, path in mods.items():
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        found |= {resolve(f'{node.module}.{a.name}') or resolve(node.module)
                  for a in node.names}
      elif isinstance(node, ast.Import):
        found |= {resolve(a.name) for a in node.names}
    edges[name] = found - {'', name}
  return edges


def test_methods_reach_models_only_through_hooks():
  edges = _imports(_modules())
  for name, targets in edges.items():
    if name.startswith('ntk_prefix.methods.') and not name.endswith(
        '__main__'):
      outside = {t for t in targets if t.startswith('ntk_prefix.') and
                 not t.startswith('ntk_prefix.methods') and
                 t != 'ntk_prefix.models.hooks'}
      assert not outside, f'{name} imports {sorted(outside)}'
    if name.startswith('ntk_prefix.models'):
      bad = {t for t in targets if t.startswith(
          ('ntk_prefix.methods', 'ntk_prefix.train', 'ntk_prefix.build',
           'ntk_prefix.steps'))}
      assert not bad, f'{name} imports {sorted(bad)}'


def test_no_import_cycles():
  edges = _imports(_modules())
  state, path, cycles = {}, [], []

  def visit(v):
    state[v] = 'open'
    path.append(v)
    for w in sorted(edges[v]):
      if state.get(w) == 'open':
        cycles.append(path[path.index(w):] + [w])
      elif w not in state:
        visit(w)
    path.pop()
    state[v] = 'done'

  for v in sorted(edges):
    if v not in state:
      visit(v)
  assert not cycles, cycles[:3]
