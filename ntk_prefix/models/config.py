"""The shape and flavour of a transformer, independent of where it came from."""
import dataclasses
from typing import Optional

FAMILIES = ('bert', 'roberta', 'gpt2', 'llama', 'vit')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the layers need; built from an HF config by `checkpoints`."""
  family: str  # one of FAMILIES
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  max_positions: int
  vocab_size: int = 0
  norm: str = 'layer'  # 'layer' or 'rms'
  norm_eps: float = 1e-12
  pre_norm: bool = False  # False: BERT post-norm blocks
  activation: str = 'gelu'  # 'gelu' (erf), 'gelu_new' (tanh), 'silu'
  gated_mlp: bool = False  # SwiGLU
  causal: bool = False
  rope_theta: Optional[float] = None  # RoPE instead of learned positions
  attn_bias: bool = True
  mlp_bias: bool = True
  tie_embeddings: bool = True
  type_vocab_size: int = 0
  pad_token_id: int = 0
  has_pooler: bool = False
  # Vision.
  image_size: int = 0
  patch_size: int = 0
  num_channels: int = 3
  name: str = ''  # human-readable origin, for errors and exports

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f'ModelConfig.family={self.family!r}; expected one of '
                       f'{FAMILIES}.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} must be a multiple of '
                       f'num_kv_heads={self.num_kv_heads}.')

  @property
  def is_decoder(self) -> bool:
    return self.causal

  @property
  def is_vision(self) -> bool:
    return self.family == 'vit'

  @property
  def max_input_tokens(self) -> int:
    """Longest token sequence the position table allows (all tokens)."""
    if self.family == 'roberta':  # positions start after padding_idx
      return self.max_positions - self.pad_token_id - 1
    if self.family == 'vit':
      return (self.image_size // self.patch_size) ** 2 + 1
    return self.max_positions

  def dimensions(self) -> dict:
    """The numbers a method state depends on (checked when loading one)."""
    return dict(family=self.family, hidden_size=self.hidden_size,
                num_layers=self.num_layers, num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads, head_dim=self.head_dim)
