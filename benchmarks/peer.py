"""The peer: the same training step in Hugging Face PEFT (PyTorch, CPU).

Only imported by the benchmark (the `bench` extra); the package never imports
torch. transformers loads the same GGUF file and dequantizes it to float32,
so both sides train the same weights on the same token ids.
"""
import os
import time

import numpy as np

# Our method (name, options) -> the PEFT config it is compared with.
PAIRS = {
    # PEFT's prefix tuning without projection is P-Tuning v2 (direct per-layer
    # keys/values); with prefix_projection it is Li & Liang's MLP reparam.
    'p_tuning_v2': ('PREFIX_TUNING', dict(num_virtual_tokens=20)),
    'prefix_tuning': ('PREFIX_TUNING', dict(num_virtual_tokens=20,
                                            prefix_projection=True,
                                            encoder_hidden_size=512)),
    'prompt_tuning': ('PROMPT_TUNING', dict(num_virtual_tokens=20)),
    'lora': ('LORA', dict(r=8, lora_alpha=16, lora_dropout=0.0,
                          target_modules=['q_proj', 'v_proj'])),
}
# Our options that match PAIRS.
OURS = {
    'p_tuning_v2': dict(length=20),
    'prefix_tuning': dict(length=20, mlp_hidden=512),
    'prompt_tuning': dict(length=20),
    'lora': dict(rank=8, alpha=16.0, targets=('query', 'value')),
}


def load_base(gguf_path: str):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count())
  return AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
      dtype=torch.float32)


class PeftStep:
  """One PEFT training step: forward with labels, backward, AdamW update."""

  def __init__(self, base_model, method: str, batch: dict):
    import peft
    import torch
    kind, kwargs = PAIRS[method]
    config_cls = {'PREFIX_TUNING': peft.PrefixTuningConfig,
                  'PROMPT_TUNING': peft.PromptTuningConfig,
                  'LORA': peft.LoraConfig}[kind]
    self.model = peft.get_peft_model(base_model,
                                     config_cls(task_type='CAUSAL_LM', **kwargs))
    self.model.train()
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.param_count = int(sum(p.numel() for p in self.params))
    self.opt = torch.optim.Adam(self.params, lr=1e-4)
    self.ids = torch.from_numpy(np.asarray(batch['input_ids'], np.int64))
    self.mask = torch.ones_like(self.ids)

  def run_train(self) -> float:
    t0 = time.perf_counter()
    out = self.model(input_ids=self.ids, attention_mask=self.mask,
                     labels=self.ids)
    out.loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0

  def unload(self):
    """The base model without this adapter, for the next pair."""
    return self.model.unload()
