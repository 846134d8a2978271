"""The seed papers' reported numbers, printed beside ours. Their scale, not
ours: larger models, full training sets, their own tuning. Each row names
where the number is written."""

PTV2 = 'THUDM/P-tuning-v2 README, "Implemented Results"'
LOPA = ('jabhinav/Prompt-Tuning-Strikes-Back-with-LOPA, '
        'LOPA-NLU/compute_rel_improv.py (m = 10)')
PREFIX = 'Li & Liang 2021, Table 1 (E2E, GPT-2 medium)'
NTK = 'Liang, Shi, Song, Yang, arXiv 2406.14036'

REPORTED = [
    # P-Tuning v2 (frozen backbone, deep prompts), dev sets.
    dict(task='boolq', method='p_tuning_v2', value=84.0,
         model='RoBERTa-large', source=PTV2),
    dict(task='rte', method='p_tuning_v2', value=86.6,
         model='RoBERTa-large', source=PTV2),
    dict(task='boolq', method='p_tuning_v2', value=74.3,
         model='BERT-large', source=PTV2),
    dict(task='rte', method='p_tuning_v2', value=80.1,
         model='BERT-large', source=PTV2),
    # LoPA (RoBERTa-large).
    dict(task='sst2', method='prompt_tuning', value=84.40,
         model='RoBERTa-large', source=LOPA),
    dict(task='sst2', method='IDPG', value=95.30, model='RoBERTa-large',
         source=LOPA),
    dict(task='sst2', method='lora', value=96.22, model='RoBERTa-large',
         source=LOPA),
    dict(task='sst2', method='lopa', value=95.99, model='RoBERTa-large',
         source=LOPA),
    dict(task='rte', method='prompt_tuning', value=53.07,
         model='RoBERTa-large', source=LOPA),
    dict(task='rte', method='IDPG', value=77.26, model='RoBERTa-large',
         source=LOPA),
    dict(task='rte', method='lora', value=85.66, model='RoBERTa-large',
         source=LOPA),
    dict(task='rte', method='lopa', value=83.39, model='RoBERTa-large',
         source=LOPA),
    # Prefix-Tuning, E2E BLEU.
    dict(task='e2e_nlg', method='full', value=68.2, model='GPT-2 medium',
         source=PREFIX),
    dict(task='e2e_nlg', method='prefix_tuning', value=69.7,
         model='GPT-2 medium', source=PREFIX),
]


def reported(tasks) -> list:
  return [r for r in REPORTED if r['task'] in tasks]
