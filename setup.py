"""ntk_prefix: prefix learning on frozen transformers in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name='ntk_prefix',
    version='0.1.0',
    description='NTK-Attention, Prefix-Tuning, P-Tuning v2, prompt tuning, '
    'LoPA, IAPT, LoRA and full fine-tuning on frozen transformers (JAX/Flax).',
    packages=find_packages(include=['ntk_prefix', 'ntk_prefix.*']),
    python_requires='>=3.10,<3.14',
    # Tested here on Python 3.11 (a clean install resolves jax 0.10.2 / flax
    # 0.12.8). jax >= 0.11 needs Python >= 3.12, where the current releases
    # are admitted (jax 0.12, flax 0.12.12); version differences are handled
    # in ntk_prefix/compat.py.
    install_requires=[
        'jax>=0.9,<0.11; python_version<"3.12"',
        'jax>=0.9,<0.13; python_version>="3.12"',
        'flax>=0.12,<0.13',
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'transformers>=5.0,<6',
        'tokenizers>=0.22,<0.24',
        'tensorflow-datasets>=4.9.8,<5',
        'array-record>=0.7,<0.9',
        'ml-collections>=1.0,<2',
        'safetensors>=0.5,<0.9',
        'gguf>=0.17,<0.20',
        'tqdm>=4.66,<5',
        'tensorboardX>=2.6,<3',
        'matplotlib>=3.8,<4',
        'scikit-learn>=1.4,<2',
        'pillow>=10,<14',  # decoding and resizing tfds images
        'sacrebleu>=2.4,<3',  # E2E BLEU in experiments/
        'numpy>=1.26,<3',
        'importlib_resources>=6',  # tfds imports it without declaring it
    ],
    extras_require={
        # torch: install the CPU wheel first (`pip install torch==2.13.0`
        # here); a bare `torch` requirement pulls gigabytes of CUDA.
        'test': ['pytest>=8,<10', 'pytest-xdist>=3.5,<4',
                 'hypothesis>=6.100,<7', 'nbclient>=0.10,<1',
                 'nbformat>=5.10,<6', 'ipykernel>=6.29,<8', 'accelerate>=1.0,<2',
                 'peft>=0.17,<1'],  # PEFT-format adapters are tested with PEFT
        'bench': ['peft>=0.17,<1', 'psutil>=5.9'],
    },
)
