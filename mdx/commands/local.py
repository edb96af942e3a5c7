"""Several JAX processes on this machine, joined as one run: the code path of a TPU pod or a GPU
cluster, on CPUs.

  python -m mdx local N COMMAND [ARGS...]      (./launch.sh local N train CONFIG --workdir=DIR)

Starts COMMAND N times with MDX_COORDINATOR (127.0.0.1 and a free port), MDX_NUM_PROCESSES=N and
MDX_PROCESS_ID=i, and XLA_FLAGS giving each process MDX_LOCAL_DEVICES fake CPU devices (default 2);
mdx's entry points join through mdx.runtime.join_processes. Every output line is prefixed with its
process ('[p1] ...'). When one process fails or is killed, the others are killed at once (SIGKILL
to each process group, grain workers included) instead of waiting forever at a collective: without
their peer they can neither step nor save, and the last complete checkpoint is where the same
command resumes. The exit status is the first failure's, and one line says which process failed
how. A SIGTERM or Ctrl-C to the launcher (a preemption notice) is passed on to every process, which
save one agreed step and exit 0 (mdx.runtime.Preemption).

The first failing process's output is shown in full. What the others print as it fails is left
out, unless they still end with status 0, and the summary line counts it: it is their collectives
failing for want of the dead peer (a Gloo traceback of some 55 lines that buried the real error).
To tell those lines apart, every line is printed half a second after it arrives (_Output), and a
thread per process notes its end as it happens, not at the next poll.
"""

from __future__ import annotations

import collections
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
DELAY_SECONDS = 0.5  # output waits this long before it is printed (see _Output)


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


class _Exits:
  """The processes' exit statuses as they end, and the first failure in time."""

  def __init__(self, procs: list[subprocess.Popen]):
    self.procs = procs
    self.first: tuple[int, int] | None = None  # (rank, status)
    self.first_at = 0.0  # time.monotonic() when it was noted
    self.ended = threading.Event()  # set at every exit: the main loop need not poll
    self._lock = threading.Lock()

  def note(self, rank: int, status: int) -> None:
    with self._lock:
      if status != 0 and self.first is None:
        self.first, self.first_at = (rank, status), time.monotonic()
    self.ended.set()

  def failure(self) -> tuple[tuple[int, int] | None, float]:
    with self._lock:
      return self.first, self.first_at

  def wait(self, rank: int) -> None:
    """A thread per process: the only caller of Popen.wait (poll() elsewhere would race it)."""
    self.note(rank, self.procs[rank].wait())

  def running(self) -> bool:
    return any(p.returncode is None for p in self.procs)


class _Output:
  """Every process's lines, prefixed, printed DELAY_SECONDS after they arrive. Once a process has
  failed, the other processes' lines that arrived from DELAY_SECONDS before its end was noted are
  held instead: a survivor's report of the failure is written after the death, and the death is
  noted within far less than that delay (a thread waits on each process)."""

  def __init__(self, exits: _Exits, count: int):
    self.exits = exits
    self.pending: collections.deque[tuple[float, int, str]] = collections.deque()
    self.held: list[list[str]] = [[] for _ in range(count)]
    self.done = threading.Event()  # set when every relay has finished: print the rest
    self._lock = threading.Lock()

  def relay(self, proc: subprocess.Popen, rank: int) -> None:
    for line in proc.stdout:
      with self._lock:
        self.pending.append((time.monotonic(), rank, line))

  def printer(self) -> None:
    while True:
      final = self.done.is_set()
      self._flush(final)
      if final:
        return
      self.done.wait(0.05)

  def _flush(self, everything: bool) -> None:
    ready = []
    with self._lock:
      cutoff = time.monotonic() - DELAY_SECONDS
      while self.pending and (everything or self.pending[0][0] <= cutoff):
        ready.append(self.pending.popleft())
    first, noted = self.exits.failure()
    for arrival, rank, line in ready:
      if first is not None and rank != first[0] and arrival >= noted - DELAY_SECONDS:
        self.held[rank].append(line)
      else:
        sys.stdout.write(f"[p{rank}] {line}")
    sys.stdout.flush()


def run(count: int, command: list[str], devices: int | None = None) -> int:
  """Runs command as `count` joined processes; returns 0 or the first failing exit status."""
  if count < 1:
    raise ValueError(f"the process count must be >= 1, got {count}")
  if not command:
    raise ValueError("no command given; usage: python -m mdx local N COMMAND [ARGS...]")
  if shutil.which(command[0]) is None:  # before N processes start, one line instead of N failures
    raise FileNotFoundError(
      f"command {command[0]!r} not found; e.g. python -m mdx local 2 python -m mdx main ..."
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
  exits = _Exits(procs)
  output = _Output(exits, count)
  threads = [threading.Thread(target=exits.wait, args=(r,), daemon=True) for r in range(count)]
  relays = [
    threading.Thread(target=output.relay, args=(p, rank), daemon=True)
    for rank, p in enumerate(procs)
  ]
  printer = threading.Thread(target=output.printer, daemon=True)
  for t in [*threads, *relays, printer]:
    t.start()

  def forward(signum, frame):  # a preemption notice for the launcher is one for every process
    del frame
    for p in procs:
      if p.returncode is None:
        p.send_signal(signum)  # the process only: its grain workers stop with it

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while True:
      exits.ended.clear()  # before looking: an exit after the look wakes the wait below
      if not exits.running() or exits.first is not None:
        break
      exits.ended.wait(0.5)
    if exits.first is not None:
      for p in procs:
        if p.returncode is None:
          _signal(p, signal.SIGKILL)
    for t in threads:
      while t.is_alive():  # join with a timeout: Ctrl-C still reaches this thread
        t.join(0.5)
  except KeyboardInterrupt:  # a preemption notice for all: each saves the agreed step
    forward(signal.SIGTERM, None)
    _wait_or_kill(procs)
  finally:
    signal.signal(signal.SIGTERM, previous)
  for p in procs:
    p.wait()
  for t in relays:
    t.join(timeout=5)
  output.done.set()
  printer.join()
  if exits.first is None:
    return 0
  rank, status = exits.first
  left_out = 0
  for other, lines in enumerate(output.held):
    if procs[other].returncode == 0:  # it finished all the same: its output is real
      sys.stdout.writelines(f"[p{other}] {line}" for line in lines)
    else:
      left_out += len(lines)
  sys.stdout.flush()
  others = ", ".join(f"p{i}={p.returncode}" for i, p in enumerate(procs) if i != rank)
  dropped = (
    f", leaving out the {left_out} lines they printed as it failed (their collectives failing "
    "without it)"
    if left_out
    else ""
  )
  # Status 2 is a user's mistake (mdx.cli): its `error:` line says what to fix, not a resume.
  fix = (
    f"fix what its 'error:' line ([p{rank}]) says and run again"
    if status == 2
    else "run the same command to resume from the last complete checkpoint"
  )
  print(
    f"mdx.local: process {rank} {_describe(status)}; stopped the others ({others}){dropped}; {fix}",
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
  """Waits GRACE_SECONDS for every process (their threads set returncode), then kills the rest."""
  deadline = time.time() + GRACE_SECONDS
  while time.time() < deadline and any(p.returncode is None for p in procs):
    time.sleep(0.2)
  for p in procs:
    if p.returncode is None:
      _signal(p, signal.SIGKILL)


def _signal(p: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:
    pass


def main(argv: list[str]) -> int:
  if len(argv) < 2 or not argv[0].isdigit():
    return cli.fail("usage: python -m mdx local N COMMAND [ARGS...]")
  return cli.call(run, int(argv[0]), argv[1:])  # a command that does not exist: one line
