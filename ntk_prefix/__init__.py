"""ntk_prefix: prefix learning (NTK-Attention and friends) on frozen transformers."""
__version__ = '0.1.0'
