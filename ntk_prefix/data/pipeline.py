"""A task's splits as tokenised, padded arrays (`Dataset`), cached beside
the prepared tfds data; images read on access. Batches of them: batches.py.
"""
import dataclasses
import hashlib
import os

import numpy as np

from ntk_prefix import atomic
from ntk_prefix.data import builders

# Prompts for generation tasks; the loss is on the target only.
PROMPTS = {
    'gsm8k': ('Question: {text}\nAnswer:', ' {target}'),
    'e2e_nlg': ('Table: {text}\nText:', ' {target}'),
}


@dataclasses.dataclass
class Dataset:
  """Arrays of one split, padded to `max_length`; `lengths` per example."""
  arrays: dict  # name -> [n, max_length] or [n]
  lengths: np.ndarray
  num_labels: int = 0

  def __len__(self):
    return len(self.lengths)


def _cut(ids: list, max_length: int, truncate: bool, what: str) -> list:
  if len(ids) > max_length:
    if not truncate:
      raise ValueError(
          f'{what} has {len(ids)} tokens, more than task.max_length='
          f'{max_length}. Raise task.max_length (within the model\'s '
          'positions) or set task.truncate=True.')
    ids = ids[:max_length]
  return ids


def encode(task_name: str, rows: list, tokenizer, max_length: int,
           truncate: bool, image_size: int = 0) -> Dataset:
  task = builders.TASKS[task_name]
  n = len(rows)
  text = lambda r, k: r[k].decode() if isinstance(r[k], bytes) else r[k]
  if task.kind == 'image':
    images = np.stack([r['image'] for r in rows])
    if image_size:  # nearest upsampling to the model's input size
      rep = image_size // images.shape[1]
      images = np.kron(images, np.ones((rep, rep), np.float32))
    pixels = np.repeat(images[:, None], 3, axis=1)  # [n, 3, h, w]
    return Dataset({'pixel_values': pixels.astype(np.float32),
                    'labels': np.array([r['label'] for r in rows], np.int32)},
                   np.ones(n, np.int32), len(task.labels))
  ids = np.zeros((n, max_length), np.int32)
  mask = np.zeros((n, max_length), np.int32)
  types = np.zeros((n, max_length), np.int32)
  lengths = np.zeros(n, np.int32)
  arrays = {'input_ids': ids, 'attention_mask': mask}
  if task.kind == 'generation':
    loss_mask = np.zeros((n, max_length), np.int32)
    prompt_mask = np.zeros((n, max_length), np.int32)
    arrays.update(loss_mask=loss_mask, prompt_mask=prompt_mask)
    prompt_fmt, target_fmt = PROMPTS[task_name]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    fields = [{'text': text(r, 'text'), 'target': text(r, 'target')}
              for r in rows]
    # One call per split, not per row: the fast tokenizer batches in Rust.
    prompts = _ids(tokenizer, [prompt_fmt.format(**f) for f in fields])
    targets = _ids(tokenizer, [target_fmt.format(**f) for f in fields])
    for i, (p, t) in enumerate(zip(prompts, targets)):
      seq = _cut(p + t + eos, max_length, truncate, f'{task_name} example {i}')
      L = len(seq)
      ids[i, :L], mask[i, :L] = seq, 1
      prompt_mask[i, :min(len(p), L)] = 1
      loss_mask[i, len(p):L] = 1
      lengths[i] = L
    return Dataset(arrays, lengths)
  arrays['token_type_ids'] = types
  arrays['labels'] = np.array([r['label'] for r in rows], np.int32)
  firsts = [text(r, 'text') for r in rows]
  seconds = [text(r, 'text_b') or None for r in rows]
  if not n:
    encoded = {'input_ids': []}
  elif all(seconds):
    encoded = tokenizer(firsts, seconds, truncation=False)
  elif not any(seconds):
    encoded = tokenizer(firsts, truncation=False)
  else:  # a split mixing pairs and single texts: a call per row
    each = [tokenizer(a, b, truncation=False) for a, b in zip(firsts, seconds)]
    encoded = {k: [e[k] for e in each] for k in each[0]}
  types_of = encoded.get('token_type_ids')
  for i, seq in enumerate(encoded['input_ids']):
    seq = _cut(seq, max_length, truncate, f'{task_name} example {i}')
    L = len(seq)
    ids[i, :L], mask[i, :L] = seq, 1
    if types_of is not None:
      types[i, :L] = types_of[i][:L]
    lengths[i] = L
  return Dataset(arrays, lengths, len(task.labels))


def _ids(tokenizer, texts: list) -> list:
  return tokenizer(texts, add_special_tokens=False)['input_ids'] if texts else []


class TfdsColumn:
  """One feature of a tfds image set, read and converted on access: a whole
  CIFAR-100 at 224 px would take 30 GB as one array."""

  def __init__(self, source, rows: np.ndarray, key: str, convert, shape):
    self.source, self.rows, self.key, self.convert = source, rows, key, convert
    self.shape = (len(rows),) + tuple(shape)
    self.ndim = len(self.shape)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, idx):
    idx = np.atleast_1d(np.asarray(idx))
    return np.stack([self.convert(self.source[int(self.rows[i])][self.key])
                     for i in idx])


def image_pixels(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w(, c)] -> float32 [3, size, size] in [-1, 1] (ViT's
  mean 0.5 / std 0.5 normalisation), bilinear resize."""
  from PIL import Image
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  pil = Image.fromarray(img.astype(np.uint8)).convert('RGB')
  if size and pil.size != (size, size):
    pil = pil.resize((size, size), Image.BILINEAR)
  x = np.asarray(pil, np.float32) / 255.0
  return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def load_tfds_images(task_name: str, split: str, *, data_dir: str,
                     image_size: int, limit: int = -1) -> Dataset:
  source, num_classes = builders.tfds_image_source(task_name, split, data_dir)
  rows = np.asarray(builders.subset(list(range(len(source))), limit),
                    np.int64)
  pixels = TfdsColumn(source, rows, 'image',
                      lambda im: image_pixels(im, image_size),
                      (3, image_size, image_size))
  labels = TfdsColumn(source, rows, 'label', lambda l: np.int32(l), ())
  return Dataset({'pixel_values': pixels, 'labels': labels},
                 np.ones(len(rows), np.int32), num_classes)


def tokenizer_fingerprint(tokenizer) -> str:
  """What an encoding depends on: the tokenizer's vocabulary, rules and
  special tokens, not the folder it was read from (a path would reuse a
  stale encoding after the folder's tokenizer changed, and encode the same
  tokenizer again for every copy of it)."""
  if tokenizer is None:
    return ''
  backend = getattr(tokenizer, 'backend_tokenizer', None)
  body = (backend.to_str() if backend is not None else
          repr(sorted(tokenizer.get_vocab().items())))
  return hashlib.sha1((body + repr(sorted(
      tokenizer.special_tokens_map.items()))).encode()).hexdigest()


def load(task_name: str, split: str, tokenizer, *, manual_dir: str,
         data_dir: str, max_length: int, truncate: bool, limit: int = -1,
         image_size: int = 0, cache: bool = True,
         download: bool = False) -> Dataset:
  """One split, tokenised (cached next to the prepared tfds data)."""
  if task_name.startswith(builders.TFDS_PREFIX):
    return load_tfds_images(task_name, split, data_dir=data_dir,
                            image_size=image_size, limit=limit)
  rows_key = f'{task_name}-{split}-{max_length}-{truncate}-{limit}-{image_size}'
  digest = hashlib.sha1(
      (rows_key + tokenizer_fingerprint(tokenizer)).encode()).hexdigest()[:12]
  path = os.path.join(data_dir, 'tokenized', f'{rows_key}-{digest}.npz')
  if cache and os.path.exists(path):
    with np.load(path) as f:
      arrays = {k[2:]: f[k] for k in f.files if k.startswith('a_')}
      return Dataset(arrays, f['lengths'], int(f['num_labels']))
  rows = builders.load_split(task_name, split, manual_dir, data_dir, download,
                             limit)
  ds = encode(task_name, rows, tokenizer, max_length, truncate, image_size)
  if cache:  # a temporary file of its own: processes may encode at once
    with atomic.open_for_write(path, 'wb') as f:
      np.savez(f, lengths=ds.lengths, num_labels=ds.num_labels,
               **{f'a_{k}': v for k, v in ds.arrays.items()})
  return ds
