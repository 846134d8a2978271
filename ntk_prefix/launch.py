"""python -m ntk_prefix.launch --processes=2 --devices_per_process=2 -- ARGS

Runs one training job as N local processes, as a pod or a cluster would:
a coordinator on a free loopback port, each process given its id and its
own CPU devices, their output streamed with a `[i]` prefix. If one process
fails or is killed, the others are stopped and the launcher exits with its
code; rerunning the same command resumes from the last checkpoint.
ARGS are `python -m ntk_prefix.train` arguments (`--module` runs another).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(i: int, n: int, devices: int, port: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env.update(
      XLA_FLAGS=' '.join(flags + [
          f'--xla_force_host_platform_device_count={devices}']),
      JAX_PLATFORMS='cpu', NTK_PREFIX_MULTIHOST='1',
      JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
      PYTHONUNBUFFERED='1')
  return env


def _stream(i: int, pipe, out) -> None:
  for line in iter(pipe.readline, ''):
    out.write(f'[{i}] {line}')
    out.flush()


def _stop(procs: list, grace: float = 10.0) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.time() + grace
  for p in procs:
    try:
      p.wait(max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(n: int, devices: int, args: list,
           module: str = 'ntk_prefix.train', out=sys.stdout) -> int:
  """Runs the N processes to the end; the exit code of the first failure,
  else 0."""
  port = free_port()
  procs, threads = [], []
  for i in range(n):
    p = subprocess.Popen([sys.executable, '-m', module, *args],
                         env=process_env(i, n, devices, port),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    out.write(f'[launch] process {i}: pid {p.pid}\n')
    out.flush()
    t = threading.Thread(target=_stream, args=(i, p.stdout, out), daemon=True)
    t.start()
    procs.append(p)
    threads.append(t)
  code = 0
  try:
    # Poll every process each round: any() would stop at the first live
    # one and never reap a killed process behind it.
    while None in (codes := [p.poll() for p in procs]):
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        out.write(f'[launch] process {i} exited with {code}; stopping the '
                  'others\n')
        _stop(procs)
        break
      time.sleep(0.2)
  except KeyboardInterrupt:
    _stop(procs)
    code = 130
  for t in threads:
    t.join(timeout=5)
  if code == 0:  # all ended between two polls: report the first failure
    failed = [(i, p.returncode) for i, p in enumerate(procs)
              if p.returncode]
    if failed:
      i, code = failed[0]
      out.write(f'[launch] process {i} exited with {code}\n')
  return code


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if '--' in argv:
    cut = argv.index('--')
    own, args = argv[:cut], argv[cut + 1:]
  else:
    own, args = argv, []
  parser = argparse.ArgumentParser(
      prog='python -m ntk_prefix.launch', description=__doc__.split('\n')[2],
      epilog='Everything after -- goes to each process.')
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--module', default='ntk_prefix.train')
  opts = parser.parse_args(own)
  if opts.processes < 1 or opts.devices_per_process < 1:
    parser.error('--processes and --devices_per_process must be >= 1')
  sys.exit(launch(opts.processes, opts.devices_per_process, args,
                  opts.module))


if __name__ == '__main__':
  main()
