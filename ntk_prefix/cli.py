"""The command line of train and sweep, as in big_vision and scenic: absl
flags, with the config as an ml_collections config flag.

  --config=configs/FILE.py[:ARG]   get_config(ARG) of that file
  --config.KEY.PATH=VALUE          sets a field that exists (the config is
                                   locked); a misspelt KEY is named with its
                                   nearest valid keys before anything runs
  --workdir=DIR                    where the run lives and resumes from
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ntk_prefix import config as config_lib

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'configs/FILE.py[:ARG]; set fields with '
    '--config.KEY=VALUE.', lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where the run lives and resumes from.')


def check_override_keys(argv: list) -> None:
  """Our error for a misspelt --config.KEY: the nearest valid keys (absl's
  own names the key alone)."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
              None)
  if spec is None:
    return
  config = config_lib.get_config(spec)
  for a in argv:
    if a.startswith('--config.'):
      try:
        config_lib.check_key(config, a[len('--config.'):].partition('=')[0])
      except KeyError as e:
        raise SystemExit(e.args[0]) from None


def config():
  """The parsed, validated config; --config and --workdir are required."""
  if CONFIG.value is None:
    raise app.UsageError('--config=configs/FILE.py is required.')
  if WORKDIR.value is None:
    raise app.UsageError('--workdir=DIR is required (it is where the run '
                         'lives and resumes from).')
  config_lib.validate(CONFIG.value)
  return CONFIG.value


def run(main) -> None:
  """app.run(main) after the key check. absl logs at WARNING unless
  --verbosity says otherwise: orbax's INFO lines would bury the progress
  bar."""
  check_override_keys(sys.argv[1:])

  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(quiet_main)
