"""How a completion is scored: GSM8K exact match of the final number,
E2E corpus BLEU against all references (sacrebleu)."""
import re

import numpy as np


def gsm8k_number(text: str):
  """The number after the first '#### ', normalised ('1,000.' -> '1000')."""
  m = re.search(r'####\s*\$?\s*(-?[\d,]*\.?\d+)', text)
  return None if m is None else _norm(m.group(1))


def last_number(text: str):
  """Lenient reading: the last number before the model starts a new
  'Question:' (the base model does not write '####')."""
  text = text.split('\nQuestion:')[0]
  found = re.findall(r'-?[\d,]*\.?\d+', text)
  return _norm(found[-1]) if found else None


def _norm(s: str) -> str:
  s = s.replace(',', '').rstrip('.')
  try:
    value = float(s)
  except ValueError:
    return s
  return str(int(value)) if value == int(value) else str(value)


def score_gsm8k(completions: list, references: list) -> dict:
  gold = [gsm8k_number(r[0]) for r in references]
  strict = [gsm8k_number(c) == g for c, g in zip(completions, gold)]
  lenient = [(gsm8k_number(c) or last_number(c)) == g
             for c, g in zip(completions, gold)]
  return {'exact_match': float(np.mean(strict)),
          'lenient_match': float(np.mean(lenient))}


def score_e2e(completions: list, references: list) -> dict:
  import sacrebleu
  hyps = [c.split('\n')[0].strip() for c in completions]
  width = max(len(r) for r in references)
  streams = [[r[i] if i < len(r) else None for r in references]
             for i in range(width)]
  return {'bleu': sacrebleu.corpus_bleu(hyps, streams).score / 100.0}


SCORERS = {'gsm8k': score_gsm8k, 'e2e_nlg': score_e2e}
