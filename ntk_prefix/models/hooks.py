"""The one place where methods meet models: what a method may hand to a layer,
and the few model facts a method may use. Methods import this module and
nothing else of `models`; models never import a method.

A method returns, per layer, a `LayerHook` of optional pieces; the attention
function (`attention.py`) and the block code know how to apply each piece.
"""
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.features import feature_map, prefix_summary
from ntk_prefix.models.hook_types import (NO_ADAPTER, NO_INPUT_HOOK,
                                          NO_LAYER_HOOK, Adapter, InputHook,
                                          LayerHook, LoraDelta, NtkState)
from ntk_prefix.models.probe import layer_key_values

__all__ = ['ModelConfig', 'feature_map', 'prefix_summary', 'NO_ADAPTER',
           'NO_INPUT_HOOK', 'NO_LAYER_HOOK', 'Adapter', 'InputHook',
           'LayerHook', 'LoraDelta', 'NtkState', 'layer_key_values']
