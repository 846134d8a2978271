"""The peer: the same training step in Hugging Face PEFT (PyTorch, CPU).

Only imported by the benchmark (the `bench` extra); the package never imports
torch. transformers loads the same GGUF file and dequantizes it to float32,
so both sides train the same weights on the same token ids.

Two precisions. float32: both sides in float32. bfloat16: ours as the tables
train (`model.dtype=bfloat16`: bf16 frozen weights, float32 accumulation and
method state); PEFT in each bf16 mode PyTorch offers for training, the base
model's weights in bf16 (PEFT keeps the adapter in float32) and float32
weights under `torch.autocast(bfloat16)`, timed in the same rounds; the
faster is the peer, and both times are recorded.
"""
import copy
import os
import time

import numpy as np

from benchmarks import harness
from ntk_prefix import methods
from ntk_prefix.checkpoints.paths import resolve

# Our method -> the PEFT config it is compared with, and our options that
# match it: each method's `peft_peer` (PEFT's prefix tuning without
# projection is P-Tuning v2; with prefix_projection, Li & Liang's MLP).
PAIRS = {n: cls.peft_peer[:2] for n, cls in methods.REGISTRY.items()
         if cls.peft_peer}
OURS = {n: cls.peft_peer[2] for n, cls in methods.REGISTRY.items()
        if cls.peft_peer}

# PEFT's ways to train at each precision: (mode, base weights, autocast).
PEFT_MODES = {'float32': (('float32', 'float32', False),),
              'bfloat16': (('bf16 weights', 'bfloat16', False),
                           ('bf16 autocast', 'float32', True))}
PRECISIONS = tuple(PEFT_MODES)


def e2e_split(path: str, split: str, length: int):
  """E2E rows as the training pipeline tokenises them with `path`'s
  tokenizer (FileNotFoundError where the E2E files are not at hand)."""
  from ntk_prefix import checkpoints, config as config_lib
  from ntk_prefix.build import data_dirs
  from ntk_prefix.data import pipeline
  task = config_lib.base_config().task
  task.name = 'e2e_nlg'
  manual, prepared = data_dirs(task)  # where a training run finds them
  return pipeline.load('e2e_nlg', split, checkpoints.load_tokenizer(path),
                       manual_dir=manual, data_dir=prepared,
                       max_length=length, truncate=True)


def instruction_batch(path: str, batch: int, length: int,
                      pack: bool = True):
  """(ours, theirs): real E2E rows (prompt + answer, loss on the answer
  only) for both sides, or None where the E2E files are not at hand.

  Ours is the training pipeline's batch under `task.pack=True` (`pack`;
  else one example per row, right-padded, as the tables train): the rows'
  examples end to end in as few rows as hold them (data/packing.py), the
  answer positions gathered before the LM head. Theirs holds the same
  examples one per row, left-padded to the longest (the padding of
  transformers' collators; PEFT has no packed mode on a CPU, its
  padding-free collator needs flash attention), so every answer ends at the
  end and `logits_to_keep` (the best transformers offers here) computes the
  head on the last `keep` positions only.
  """
  from ntk_prefix.data import batches
  try:
    ds = e2e_split(path, f'train[:{4 * batch}]', length)
  except FileNotFoundError as e:
    print(f'  no instruction batch: {e}', flush=True)
    return None
  ours = batches.train_batch(ds, 0, batch, seed=0, pack=pack)
  plain = batches.train_batch(ds, 0, batch, seed=0)
  lengths = plain['attention_mask'].sum(1)
  width = int(lengths.max())
  left = {k: np.zeros((batch, width), np.int32) for k in (
      'input_ids', 'attention_mask', 'loss_mask')}
  for i, n in enumerate(lengths):
    for k in left:
      left[k][i, width - n:] = plain[k][i, :n]
  # The head runs where a prediction has loss: the answers' tokens.
  keep = int((width - np.argmax(left['loss_mask'], axis=1)).max()) + 1
  theirs = dict(left, keep=min(keep, width),
                position_ids=np.maximum(np.cumsum(left['attention_mask'], 1)
                                        - 1, 0))
  del ours['loss_mask']  # gathered into loss_positions/targets/weights
  return ours, theirs


def load_base(path: str):
  """The float32 transformers model of a GGUF file or a checkpoint folder."""
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count())
  if os.path.isdir(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  return AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path),
      dtype=torch.float32)


class PeftStep:
  """One PEFT training step: forward with labels, backward, Adam update."""

  def __init__(self, base_model, method: str, batch: dict,
               instruction: bool = False, autocast: bool = False):
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
    self.instruction = instruction
    self.autocast = autocast
    self.lora = kind == 'LORA'
    if instruction:
      self.mask = torch.from_numpy(np.asarray(batch['attention_mask'],
                                              np.int64))
      self.positions = torch.from_numpy(np.asarray(batch['position_ids'],
                                                   np.int64))
      self.keep = batch['keep']
      k = self.keep
      self.targets = self.ids[:, -k + 1:]
      self.weights = torch.from_numpy(np.asarray(
          batch['loss_mask'][:, -k + 1:], np.float32))
    else:
      self.mask = torch.ones_like(self.ids)

  def loss(self):
    import torch
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.autocast):
      return self._loss()

  def _loss(self):
    import torch
    if not self.instruction:
      return self.model(input_ids=self.ids, attention_mask=self.mask,
                        labels=self.ids).loss
    # PEFT's prompt-learning models ignore position_ids (with a warning).
    extra = {'position_ids': self.positions} if self.lora else {}
    logits = self.model(input_ids=self.ids, attention_mask=self.mask,
                        logits_to_keep=self.keep, **extra
                        ).logits[:, -self.keep:-1]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        self.targets.reshape(-1), reduction='none')
    w = self.weights.reshape(-1)
    return (nll * w).sum() / w.sum()

  def run_train(self) -> float:
    t0 = time.perf_counter()
    self.loss().backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0

  def unload(self):
    """The base model without this adapter, for the next pair."""
    return self.model.unload()


def _median(times: list) -> float:
  return float(np.median(times))


def sweep_peer(model: str, batch: int, length: int, repeats: int,
               rates: dict, precisions=PRECISIONS, methods=tuple(PAIRS)
               ) -> list:
  """Ours and PEFT's step for the same method, alternating step by step and
  back to back, on two batches: every token carries loss ('all_tokens'),
  and real E2E rows with loss on the answer only ('instruction'); at each
  of `precisions` (rates: the matmul rate of each, for the FLOP floor)."""
  import torch
  cfg, frozen = harness.load_model(model)
  batches = {'all_tokens': (harness.make_batch(cfg, batch, length),) * 2}
  instruction = instruction_batch(resolve(model), batch, length)
  if instruction is not None:
    batches['instruction'] = instruction
  base = load_base(resolve(model))
  rows = []
  repeats = max(repeats, 5)  # medians of at least 5 timed steps per side
  for precision in precisions:
    weights = harness.as_dtype(frozen, precision)
    for kind, (ours_batch, peft_batch) in batches.items():
      # The floor is the real tokens' work: padding is work a side chose.
      tokens = int(np.sum(peft_batch['attention_mask']))
      model_flops = 4 * harness.matmul_params(cfg, frozen) * tokens
      for method in methods:
        ours = harness.Step(cfg, weights, method, OURS[method], ours_batch,
                            lm=True)
        theirs = {mode: PeftStep(
            copy.deepcopy(base).to(getattr(torch, dtype)), method,
            peft_batch, instruction=kind == 'instruction', autocast=autocast)
                  for mode, dtype, autocast in PEFT_MODES[precision]}
        times = {'ours': [], **{mode: [] for mode in theirs}}
        for r in range(repeats + 1):  # alternating: the figures reported
          step = {'ours': ours.run_train(),
                  **{mode: s.run_train() for mode, s in theirs.items()}}
          if r:
            for k, t in step.items():
              times[k].append(t)
        # Back to back as well: on this machine a torch step slows the JAX
        # step that follows it (benchmarks/README.md): both views recorded.
        block = {'ours': [ours.run_train() for _ in range(repeats)],
                 **{mode: [s.run_train() for _ in range(repeats)]
                    for mode, s in theirs.items()}}
        # PEFT's faster mode at this precision is the peer.
        mode = min(theirs, key=lambda m: _median(times[m]))
        t_ours, t_peft = _median(times['ours']), _median(times[mode])
        b_ours, b_peft = _median(block['ours']), _median(block[mode])
        common = dict(sweep='peer', peer_batch=kind, precision=precision,
                      model=os.path.basename(model), method=method,
                      prefix_length=OURS[method].get('length', 0),
                      batch=batch, seq_len=ours_batch['input_ids'].shape[1],
                      tokens=tokens, model_flops=model_flops,
                      floor_rate=rates[precision])
        floor = model_flops / rates[precision]
        rows.append(dict(common, params=ours.param_count,
                         shape=list(ours_batch['input_ids'].shape),
                         step_seconds=t_ours, ratio_to_peer=t_ours / t_peft,
                         step_seconds_back_to_back=b_ours,
                         ratio_to_peer_back_to_back=b_ours / b_peft,
                         peak_memory_bytes=ours.memory_bytes,
                         step_flops_xla=ours.flops,
                         floor_fraction=floor / t_ours))
        rows.append(dict(common, peer='peft', peft_mode=mode,
                         shape=list(np.shape(peft_batch['input_ids'])),
                         peft_mode_seconds={m: _median(times[m])
                                            for m in theirs},
                         params=theirs[mode].param_count,
                         step_seconds=t_peft, ratio_to_peer=t_ours / t_peft,
                         step_seconds_back_to_back=b_peft,
                         ratio_to_peer_back_to_back=b_ours / b_peft,
                         peak_memory_bytes=None,
                         floor_fraction=floor / t_peft))
        print(f'  {precision:8s} {kind:11s} {method:14s} ours {t_ours:6.3f} s'
              f'  peft ({mode}) {t_peft:6.3f} s  ours/peft '
              f'{t_ours / t_peft:5.2f} alternating, {b_ours / b_peft:5.2f} '
              'back to back', flush=True)
        del ours, theirs
  return rows
