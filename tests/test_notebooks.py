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


# Smaller sizes for a notebook's cell tagged `parameters` (papermill's
# convention): the test proves every cell still runs, not the figures' values.
SMALL = {
    '01_ntk_convergence.ipynb': 'LENGTHS = [2, 8, 32]\nSTEPS = 50',
    '02_ntk_approximation.ipynb':
        'LENGTHS = [2, 16, 128]\nFIT_STEPS = 20\nFEATURES = [16, 64]',
}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_executes(path):
  from nbclient import NotebookClient
  nb = nbformat.read(path, as_version=4)
  small = SMALL.get(os.path.basename(path))
  if small:
    tagged = [i for i, c in enumerate(nb.cells)
              if 'parameters' in c.metadata.get('tags', [])]
    assert tagged, f'{path}: no cell tagged parameters to resize'
    at = tagged[0]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(small))
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
