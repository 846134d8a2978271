"""Checkpoints in, plain pytrees out: HF folders and GGUF files."""
from ntk_prefix.checkpoints.hf import (CheckpointError, config_from_hf, load,
                                       load_tokenizer)
from ntk_prefix.checkpoints.paths import default_decoder_path, default_encoder_path

__all__ = ['CheckpointError', 'config_from_hf', 'load', 'load_tokenizer',
           'default_encoder_path', 'default_decoder_path']
