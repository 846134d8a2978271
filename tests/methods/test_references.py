"""Outside references for the methods that had none: prompt tuning against
PEFT, LoPA against its official forward (written here in PyTorch from the
repository), IAPT against the paper's equations in NumPy, full fine-tuning's
gradients against PyTorch's; gradient accumulation against one large batch;
every method on ViT by value."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from conftest import text_batch
from ntk_prefix import checkpoints, methods, models, trees
from ntk_prefix.checkpoints import names


def _load(hf_checkpoint, family, **kw):
  path, model = hf_checkpoint(family, **kw)
  cfg, frozen, head = checkpoints.load(path)
  return cfg, frozen, head, model


def test_prompt_tuning_equals_peft_prompt_tuning(hf_checkpoint):
  import peft
  cfg, frozen, _, model = _load(hf_checkpoint, 'llama')
  method = methods.get('prompt_tuning', cfg, {'length': 5, 'init': 'normal',
                                              'init_std': 1.0})
  params = method.init(jax.random.PRNGKey(0))
  ids, _ = text_batch(97, batch=2, length=7)
  mask = np.ones_like(ids)  # PEFT gives soft tokens positions 0..n-1
  ours = models.apply(cfg, frozen, params, {'input_ids': ids,
                                            'attention_mask': mask},
                      adapter=method)['logits']
  config = peft.PromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=5)
  wrapped = peft.get_peft_model(model, config).eval()
  with torch.no_grad():
    wrapped.prompt_encoder['default'].embedding.weight.copy_(
        torch.tensor(np.asarray(params['prompt'])))
    ref = wrapped(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask)).logits.numpy()
  ref = ref[:, 5:]  # PEFT returns the soft tokens' positions too
  with torch.no_grad():
    plain = model(input_ids=torch.tensor(ids, dtype=torch.long)).logits
  assert np.abs(ref - plain.numpy()).max() > 1e-2  # the prompt matters
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)


def test_full_fine_tuning_gradients_equal_pytorch(hf_checkpoint):
  cfg, frozen, head, model = _load(hf_checkpoint, 'bert')
  method = methods.get('full', cfg)
  params = {'method': method.init(jax.random.PRNGKey(0), frozen),
            'head': head}
  ids, mask = text_batch(97)
  labels = np.array([0, 2, 1])
  batch = {'input_ids': ids, 'attention_mask': mask}

  def loss(p):
    pooled = models.apply(cfg, frozen, p['method'], batch,
                          adapter=method)['pooled']
    logits = models.classifier_logits(p['head'], pooled)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(labels)).mean()

  value, grads = jax.value_and_grad(loss)(params)
  model.zero_grad()
  out = model(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask),
              labels=torch.tensor(labels))
  out.loss.backward()
  np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5)
  # The same name map that loads the weights places the gradients.
  torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters()
                 if p.grad is not None}
  tree, _, _ = names.to_tree('bert', torch_grads, cfg.tie_embeddings)
  ref_head = tree.pop('head')
  ours = trees.flatten(grads['method']['backbone'])
  ref = trees.flatten(tree)
  assert set(ref) <= set(ours)
  for key, g in ref.items():
    np.testing.assert_allclose(np.asarray(ours[key]), g, atol=2e-5,
                               err_msg=key)
  for key, g in trees.flatten(ref_head).items():
    np.testing.assert_allclose(np.asarray(trees.flatten(grads['head'])[key]),
                               g, atol=2e-5, err_msg=key)
  # Where the loss reaches, gradients are real; the rest (pooler of unused
  # rows aside) match zeros too.
  assert max(np.abs(g).max() for g in ref.values()) > 1e-3


def _torch_bert_with_prompt(model, ids, mask, prompt):
  """HF BERT (PyTorch) with soft tokens inserted after [CLS] in word space
  (positions run over the whole sequence, token type 0): the hidden states
  of the input positions."""
  bert = model.bert
  words = bert.embeddings.word_embeddings(torch.tensor(ids, dtype=torch.long))
  b, n = prompt.shape[0], prompt.shape[1]
  x = torch.cat([words[:, :1], prompt, words[:, 1:]], 1)
  full_mask = torch.cat([torch.ones(b, 1 + n, dtype=torch.long),
                         torch.tensor(mask[:, 1:], dtype=torch.long)], 1)
  with torch.no_grad():
    hidden = bert(inputs_embeds=x, attention_mask=full_mask,
                  token_type_ids=torch.zeros_like(full_mask)
                  ).last_hidden_state
  return torch.cat([hidden[:, :1], hidden[:, 1 + n:]], 1).numpy()


def test_lopa_equals_official_forward(hf_checkpoint):
  """The official LOPA forward (jabhinav/Prompt-Tuning-Strikes-Back-with-
  LOPA, LatentPromptAttentionGenerator.forward and LOPA.forward): e(x) is the
  encoder's first-token hidden state; each head is dropout -> Linear -> tanh
  -> Linear; Z_I = u v^T; the prompt is Z_S * sigmoid(Z_I)."""
  cfg, frozen, _, model = _load(hf_checkpoint, 'bert')
  method = methods.get('lopa', cfg, {'length': 4, 'rank': 2, 'hidden': 16})
  params = method.init(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda a: 3 * a, params)  # gates away from 1/2
  ids, mask = text_batch(97)
  ours = models.apply(cfg, frozen, params, {'input_ids': ids,
                                            'attention_mask': mask},
                      adapter=method)['hidden']

  def head(p, n_out):
    dense = torch.nn.Linear(cfg.hidden_size, 16)
    out = torch.nn.Linear(16, n_out)
    for layer, w, b in ((dense, 'w1', 'b1'), (out, 'w2', 'b2')):
      layer.weight.data = torch.tensor(np.asarray(p[w]).T)
      layer.bias.data = torch.tensor(np.asarray(p[b]))
    return lambda x: out(torch.tanh(dense(torch.nn.Dropout(0.1).eval()(x))))

  with torch.no_grad():
    e = model.bert(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask)).last_hidden_state[:, 0]
    u = head(params['u'], 4 * 2)(e).view(-1, 4, 2)
    v = head(params['v'], cfg.hidden_size * 2)(e).view(-1, cfg.hidden_size, 2)
    z_i = torch.einsum('bir,bjr->bij', u, v)
    prompt = torch.tensor(np.asarray(params['z_s']))[None] * torch.sigmoid(z_i)
  ref = _torch_bert_with_prompt(model, ids, mask, prompt)
  m = mask[..., None] > 0
  np.testing.assert_allclose(np.where(m, ours, 0), np.where(m, ref, 0),
                             atol=1e-4)


def _rational_np(x, num, den):
  p = sum(num[i] * x ** i for i in range(6))
  q = sum(den[i] * x ** (i + 1) for i in range(4))
  return p / (1.0 + np.abs(q))


def test_iapt_generator_equals_paper_equations(hf_checkpoint):
  """Section 3.2 of the paper, in NumPy (float64): X = H W_down + b_down over
  the instruction tokens; soft token j pools X with its own query,
  a_j = softmax_t(X q_j / sqrt(r)); then g = the rational activation; then
  one shared up-projection: P_j = g(a_j X) W_up + b_up."""
  cfg, frozen, _, _ = _load(hf_checkpoint, 'llama')
  method = methods.get('iapt', cfg, {'num_tokens': 3, 'bottleneck': 8})
  params = method.init(jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  params = {k: np.asarray(v) + 0.3 * rng.randn(*v.shape).astype(np.float32)
            for k, v in params.items()}  # a rational far from the identity
  h = rng.randn(2, 6, cfg.hidden_size).astype(np.float32)
  cond = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])  # instructions
  layer = 1
  got = np.asarray(method.layer_hook(method.layer_state(params), layer,
                                     jnp.asarray(h), cond,
                                     False, None).prefix_hidden)
  p = {k: np.asarray(v[layer], np.float64) for k, v in params.items()}
  for b in range(2):
    x = h[b][cond[b] > 0].astype(np.float64) @ p['down'] + p['down_bias']
    for j in range(3):
      s = x @ p['pool_query'][j] / np.sqrt(8)
      a = np.exp(s - s.max())
      a /= a.sum()
      token = _rational_np(a @ x, p['num'], p['den']) @ p['up'] + p['up_bias']
      np.testing.assert_allclose(got[b, j], token, rtol=2e-4, atol=2e-5)
  # The activation starts as the identity: x -> x at init.
  fresh = method.init(jax.random.PRNGKey(1))
  xs = np.linspace(-3, 3, 13)
  np.testing.assert_allclose(
      _rational_np(xs, np.asarray(fresh['num'][0]),
                   np.asarray(fresh['den'][0])), xs)


def test_gradient_accumulation_equals_one_large_batch(tiny_encoder,
                                                      prepared_dir):
  """Two accumulated steps of 8 rows = one step of the same 16 rows."""
  from conftest import tiny_config
  from ntk_prefix.build import build, init_trainable
  from ntk_prefix.optimizer import make_optimizer
  from ntk_prefix.steps import make_steps, place_frozen
  from ntk_prefix.data import batches

  def one_update(batch_size, accumulate):
    c = tiny_config(tiny_encoder, prepared_dir, batch_size=batch_size, **{
        'optimizer.accumulate_steps': accumulate, 'method.name': 'lora'})
    s = build(c)
    frozen, sharding = place_frozen(s)
    opt, _ = make_optimizer(c, s.method.no_decay)
    params = init_trainable(s)
    state = opt.init(params)
    step, _ = make_steps(s, opt, sharding)
    for k in range(accumulate):
      batch = batches.train_batch(s.train_ds, k, batch_size, c.seed)
      params, state, _ = step(params, state, frozen, batch,
                              jax.random.PRNGKey(k), np.float32(1e-2))
    return jax.device_get(params), init_trainable(s)

  accumulated, start = one_update(8, 2)
  large, _ = one_update(16, 1)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(large), jax.tree.leaves(start)))
  assert moved > 1e-3  # the update is real
  for a, b in zip(jax.tree.leaves(accumulated), jax.tree.leaves(large)):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_an_accumulated_update_takes_the_rate_of_its_last_micro_step(
    tiny_encoder, prepared_dir, tmp_path):
  """The schedule runs over training steps, accumulated or not: two
  micro-steps of 8 rows under a linear decay from 0.02 to 0 over 2 steps
  are one update at the rate of step 1, 0.01 = one step of the same 16 rows
  at a constant 0.01. (Applied at the update's own count, as before, the
  rate was 0.02: the schedule stretched by the accumulation factor.)"""
  from conftest import tiny_config
  from ntk_prefix import checkpoints, export, train

  def trained(name, **overrides):
    c = tiny_config(tiny_encoder, prepared_dir, **{
        'method.name': 'lora', 'optimizer.warmup_steps': 0,
        'eval_every': 2, **overrides})
    workdir = str(tmp_path / name)
    train.train_and_evaluate(c, workdir)
    cfg, frozen, _ = checkpoints.load(tiny_encoder)
    _, state = export.load(os.path.join(workdir, 'final'), cfg, frozen)
    return state, export.load_head(os.path.join(workdir, 'final'))

  accumulated = trained('accumulated', batch_size=8, total_steps=2, **{
      'optimizer.accumulate_steps': 2, 'optimizer.schedule': 'linear',
      'optimizer.lr': 0.02, 'optimizer.end_lr_ratio': 0.0})
  large = trained('large', batch_size=16, total_steps=1, **{
      'optimizer.schedule': 'constant', 'optimizer.lr': 0.01})
  for a, b in zip(jax.tree.leaves(accumulated), jax.tree.leaves(large)):
    np.testing.assert_allclose(a, b, atol=2e-6)


def _torch_vit_with_prompt(model, pixels, prompt):
  """HF ViT (PyTorch) with VPT prompt tokens after [CLS] (positions added
  before, as VPT does): the classifier logits on [CLS]."""
  vit = model.vit
  with torch.no_grad():
    x = vit.embeddings(torch.tensor(pixels))
    if prompt is not None:
      p = torch.tensor(np.asarray(prompt))[None].expand(x.shape[0], -1, -1)
      x = torch.cat([x[:, :1], p, x[:, 1:]], 1)
    for layer in vit.layers:
      x = layer(x)
      x = x[0] if isinstance(x, tuple) else x
    return model.classifier(vit.layernorm(x)[:, 0]).numpy()


def test_methods_on_vision_by_value(hf_checkpoint):
  cfg, frozen, head, model = _load(hf_checkpoint, 'vit')
  pixels = np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32)
  batch = {'pixel_values': pixels}

  def logits(name, params, **opts):
    method = methods.get(name, cfg, opts)
    pooled = models.apply(cfg, frozen, params, batch,
                          adapter=method)['pooled']
    return np.asarray(models.classifier_logits(head, pooled))

  with torch.no_grad():
    plain = model(pixel_values=torch.tensor(pixels)).logits.numpy()
  # Identity at init: the frozen ViT's logits (PyTorch's).
  for name, opts in (('ntk_attention', {'init': 'zeros'}), ('lora', {}),
                     ('full', {}), ('none', {})):
    method = methods.get(name, cfg, opts)
    params = method.init(jax.random.PRNGKey(0), frozen)
    np.testing.assert_allclose(logits(name, params, **opts), plain,
                               atol=1e-4, err_msg=name)
  # Prompt tuning = VPT-shallow in PyTorch's ViT.
  pt = methods.get('prompt_tuning', cfg, {'init': 'normal', 'init_std': 1.0,
                                          'length': 3})
  pt_params = pt.init(jax.random.PRNGKey(1))
  ours = logits('prompt_tuning', pt_params, init='normal', length=3)
  ref = _torch_vit_with_prompt(model, pixels, pt_params['prompt'])
  assert np.abs(ref - plain).max() > 1e-3
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  # Prefix-Tuning = P-Tuning v2 holding its materialised prefix.
  pre = methods.get('prefix_tuning', cfg, {'length': 3})
  pre_params = pre.init(jax.random.PRNGKey(2))
  kv = pre.materialize(pre_params)
  np.testing.assert_allclose(
      logits('prefix_tuning', pre_params, length=3),
      logits('p_tuning_v2', {'k': kv['k'], 'v': kv['v']}, length=3,
             shift_positions=False), atol=1e-5)
  # The remaining methods move the logits away from the frozen model.
  for name in ('ntk_attention', 'p_tuning_v2', 'lopa', 'iapt'):
    method = methods.get(name, cfg)
    params = jax.tree.map(lambda a: a + 0.5, method.init(
        jax.random.PRNGKey(3), frozen))
    out = logits(name, params)
    assert np.all(np.isfinite(out)) and np.abs(out - plain).max() > 1e-3, name
