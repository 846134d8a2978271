"""python -m experiments.readme

Rewrites the README's results block (between the two markers) from the
results folders, so no number there is typed by hand; a test checks the
block equals what this command writes.
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = '<!-- results:begin (python -m experiments.readme) -->'
END = '<!-- results:end -->'
ORDER = ('nlu', 'gsm8k', 'e2e_nlg', 'vision_pipeline_check')


def folders(root: str) -> list:
  found = sorted(d for d in os.listdir(root)
                 if os.path.exists(os.path.join(root, d, 'table.md')))
  rank = {name: i for i, name in enumerate(ORDER)}
  return sorted(found, key=lambda d: (rank.get(d, len(ORDER)), d))


def block(repo: str = REPO) -> str:
  root = os.path.join(repo, 'experiments', 'results')
  parts = [BEGIN]
  for d in folders(root) if os.path.isdir(root) else []:
    with open(os.path.join(root, d, 'table.md')) as f:
      text = f.read().strip()
    # One level down: the README's section is '## Results'.
    text = '\n'.join('#' + l if l.startswith('#') else l
                     for l in text.splitlines())
    parts += ['', text]
    for png in sorted(f for f in os.listdir(os.path.join(root, d))
                      if f.endswith('.png')):  # each table's figures
      parts += ['', f'![{d}](experiments/results/{d}/{png})']
  parts.append(END)
  return '\n'.join(parts)


def rewrite(readme: str, new_block: str) -> str:
  if BEGIN not in readme or END not in readme:
    raise ValueError(f'README.md has no {BEGIN} ... {END} block.')
  head, rest = readme.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return head + new_block + tail


def main():
  path = os.path.join(REPO, 'README.md')
  with open(path) as f:
    readme = f.read()
  with open(path, 'w') as f:
    f.write(rewrite(readme, block()))
  print(f'{path}: results block rewritten from experiments/results/')


if __name__ == '__main__':
  main()
