"""Several JAX processes on this machine, joined as one run: the code path of a TPU pod or a GPU
cluster, on CPUs.

  python -m mdx.local N COMMAND [ARGS...]      (./launch.sh local N train CONFIG --workdir=DIR)

Starts COMMAND N times with MDX_COORDINATOR (127.0.0.1 and a free port), MDX_NUM_PROCESSES=N and
MDX_PROCESS_ID=i, and XLA_FLAGS giving each process MDX_LOCAL_DEVICES fake CPU devices (default 2);
mdx's entry points join through mdx.runtime.join_processes. Every output line is prefixed with its
process ('[p1] ...'). When one process fails or is killed, the others are killed at once (SIGKILL
to each process group, grain workers included) instead of waiting forever at a collective: without
their peer they can neither step nor save, and the last complete checkpoint is where the same
command resumes. The exit status is the first failure's, and one line says which process failed
how. A SIGTERM or Ctrl-C to the launcher (a preemption notice) is passed on to every process, which
save one agreed step and exit 0 (mdx.runtime.Preemption).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from mdx import cli, runtime

GRACE_SECONDS = 60  # for the agreed save after Ctrl-C


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(rank: int, count: int, port: int, devices: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  env.update(
    {
      runtime.COORDINATOR_ENV: f"127.0.0.1:{port}",
      runtime.NUM_PROCESSES_ENV: str(count),
      runtime.PROCESS_ID_ENV: str(rank),
      "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
      "JAX_PLATFORMS": env.get("JAX_PLATFORMS", "cpu"),
    }
  )
  return env


def _relay(proc: subprocess.Popen, prefix: str) -> None:
  for line in proc.stdout:
    sys.stdout.write(prefix + line)
    sys.stdout.flush()


def run(count: int, command: list[str], devices: int | None = None) -> int:
  """Runs command as `count` joined processes; returns 0 or the first failing exit status."""
  if count < 1:
    raise ValueError(f"the process count must be >= 1, got {count}")
  if not command:
    raise ValueError("no command given; usage: python -m mdx.local N COMMAND [ARGS...]")
  if shutil.which(command[0]) is None:  # before N processes start, one line instead of N failures
    raise FileNotFoundError(
      f"command {command[0]!r} not found; e.g. python -m mdx.local 2 python -m mdx.main ..."
    )
  devices = devices or int(os.environ.get("MDX_LOCAL_DEVICES", "2"))
  port = free_port()
  procs = [
    subprocess.Popen(
      command,
      env=process_env(rank, count, port, devices),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
      start_new_session=True,  # a process group each: stopping one stops its grain workers too
    )
    for rank in range(count)
  ]
  relays = [
    threading.Thread(target=_relay, args=(p, f"[p{rank}] "), daemon=True)
    for rank, p in enumerate(procs)
  ]
  for t in relays:
    t.start()

  def forward(signum, frame):  # a preemption notice for the launcher is one for every process
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)  # the process only: its grain workers stop with it

  signal.signal(signal.SIGTERM, forward)
  first = None  # (rank, status) of the first process that failed
  try:
    while None in [p.poll() for p in procs]:  # a list: poll every process, not just the first
      failed = [
        (rank, p.returncode) for rank, p in enumerate(procs) if p.returncode not in (None, 0)
      ]
      if failed:
        first = failed[0]
        for p in procs:
          if p.poll() is None:
            _signal(p, signal.SIGKILL)
        break
      time.sleep(0.2)
  except KeyboardInterrupt:  # a preemption notice for all: each saves the agreed step
    forward(signal.SIGTERM, None)
    _wait_or_kill(procs)
  for p in procs:
    p.wait()
  for t in relays:
    t.join(timeout=5)
  if first is None:
    first = next(((r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0), None)
  if first is None:
    return 0
  rank, status = first
  others = ", ".join(f"p{i}={p.returncode}" for i, p in enumerate(procs) if i != rank)
  # Status 2 is a user's mistake (mdx.cli): its `error:` line says what to fix, not a resume.
  fix = (
    f"fix what its 'error:' line ([p{rank}]) says and run again"
    if status == 2
    else "run the same command to resume from the last complete checkpoint"
  )
  print(
    f"mdx.local: process {rank} {_describe(status)}; stopped the others ({others}); {fix}",
    file=sys.stderr,
  )
  return status if status > 0 else 128 - status  # a shell's status for death by a signal


def _describe(status: int) -> str:
  if status < 0:
    try:
      return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
      return f"was killed by signal {-status}"
  return f"exited with status {status}"


def _wait_or_kill(procs: list[subprocess.Popen]) -> None:
  deadline = time.time() + GRACE_SECONDS
  while time.time() < deadline and any(p.poll() is None for p in procs):
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      _signal(p, signal.SIGKILL)


def _signal(p: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:
    pass


def main(argv: list[str]) -> int:
  if len(argv) < 2 or not argv[0].isdigit():
    return cli.fail("usage: python -m mdx.local N COMMAND [ARGS...]")
  return cli.call(run, int(argv[0]), argv[1:])  # a command that does not exist: one line


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
