"""The notebooks run top to bottom (so they cannot rot) and are stored
without outputs."""
import glob
import os

import nbformat
import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..',
                                          'notebooks', '*.ipynb')))


def test_there_are_three_notebooks():
  assert len(NOTEBOOKS) == 3


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{path}: outputs are stored; clear them before committing.')


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_executes(path):
  from nbclient import NotebookClient
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(path)}}
                 ).execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  figures = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
             if 'image/png' in o.get('data', {})]
  if 'tour' not in path:
    assert figures, f'{path} drew no figure'
