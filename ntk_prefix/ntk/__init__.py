"""NTK analysis of prefix learning (Liang, Shi, Song, Yang 2024).

kernel.py         empirical NTK over a method pytree, spectrum, drift
stylized.py       the paper's one-layer prefix-attention setting, trained by GD
approximation.py  NTK-Attention against an explicit prefix of length m
figures.py        the notebooks' figures, and a command that writes them all
"""
from ntk_prefix.ntk.kernel import (empirical_ntk, eigenspectrum, kernel_drift,
                                   model_output_fn)

__all__ = ['empirical_ntk', 'eigenspectrum', 'kernel_drift', 'model_output_fn']
