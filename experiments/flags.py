"""The command line of every experiment, as train's (ntk_prefix/cli.py) and
big_vision's: absl flags, with the table's config file as the ml_collections
config flag.

  --config=configs/nlu.py    the table's config file; each run's argument
                             (task, size) is the table's to choose, so no
                             :ARG here
  --config.KEY=VALUE         applied to every run of the table, e.g.
                             --config.total_steps=1000

The flags the commands share are defined here once, so any number of
experiment modules import into one process (the tests do).
"""
import dataclasses
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ntk_prefix import cli, provenance

METHODS = flags.DEFINE_list(
    'methods', None, "The table's rows, NAME or NAME:PRESET (default: the "
    "table config's METHODS; presets: python -m ntk_prefix.methods "
    "--presets).")
SEEDS = flags.DEFINE_integer(
    'seeds', None, "Seeds per row (default: the command's).", lower_bound=1)
FULL = flags.DEFINE_bool(
    'full', False, "The papers' sizes (hours on an accelerator).")
OUT = flags.DEFINE_string(
    'out', None, "Where results go (default: the command's folder under "
    'experiments/results/).')
TASK = flags.DEFINE_string('task', None, "The task (default: the command's).")
TASKS = flags.DEFINE_list('tasks', None,
                          "The tasks (default: the command's).")


@dataclasses.dataclass(frozen=True)
class Command:
  """What an experiment command was asked for, defaults filled in."""
  base: dict      # --config.KEY=VALUE: applied to every run of the table
  methods: list
  seeds: int
  full: bool
  workdir: str
  out: str        # '' where --out was not given
  command: str    # the command line that reruns this


def parsed(argv: list, module: str, config_file: str, workdir: str, *,
           methods=(), seeds: int = 3, unused: tuple = ()) -> Command:
  """The flags of `python -m MODULE` whose runs use CONFIG_FILE; a shared
  flag in `unused` means nothing to MODULE, so giving it is an error."""
  if len(argv) > 1:
    raise app.UsageError(f'{module}: unexpected arguments {argv[1:]}; '
                         'every option is a --flag (see --helpfull).')
  for name in unused:
    if flags.FLAGS[name].present:
      raise app.UsageError(f'--{name}: {module} has no such option '
                           '(its options: --helpfull).')
  base = {}
  if cli.CONFIG.value is not None:
    spec = config_flags.get_config_filename(flags.FLAGS['config'])
    path, colon, _ = spec.partition(':')
    if colon:
      raise app.UsageError(
          f"--config={spec}: the table chooses each run's argument itself "
          f'(--task/--tasks, --full); pass --config={path}.')
    if os.path.normpath(path) != os.path.normpath(config_file):
      raise app.UsageError(
          f'--config={spec}: {module} runs these tasks on {config_file}; '
          f'pass --config={config_file}.')
    base = dict(config_flags.get_override_values(flags.FLAGS['config']))
  common.use_compilation_cache()
  return Command(
      base=base, methods=list(METHODS.value or methods),
      seeds=SEEDS.value or seeds, full=FULL.value,
      workdir=cli.WORKDIR.value or workdir, out=OUT.value or '',
      command=provenance.command_line(module, sys.argv[1:]))


def one_of(flag: str, value: str, choices) -> str:
  if value not in choices:
    raise app.UsageError(f'--{flag}={value}: not one of {sorted(choices)}.')
  return value


def run(main, config_hint: str) -> None:
  """cli.run(main) for an experiment: config_flags reads --config.KEY only
  after --config=FILE, so say which FILE rather than absl's 'unknown flag'."""
  argv = sys.argv[1:]
  if any(a.startswith('--config.') for a in argv) and not any(
      a.startswith('--config=') for a in argv):
    raise SystemExit(f'--config.KEY=VALUE needs the config file before it: '
                     f'add --config={config_hint}.')
  cli.run(main)
