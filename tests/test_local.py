"""The local command (mdx.commands.local) with stand-in processes (`python -c`): when one process
fails, its own output is shown in full, the survivors' output as it fails (their collectives
failing without the peer: a long Gloo traceback in a real run) is left out and counted in the one
summary line, and nothing is lost when every process succeeds.

The stand-ins talk over TCP as jax's collectives do: process 0 listens, process 1 connects, and
process 0 learns of its peer's death from the closed connection, so its 'traceback' is written
after the death, as a real survivor's is."""

import re
import signal
import sys

import pytest

from mdx.commands import local

PAIR = """
import os, socket, sys, time
rank, port = int(os.environ["MDX_PROCESS_ID"]), int(os.environ["MDX_COORDINATOR"].split(":")[1])
if rank == 0:
  server = socket.create_server(("127.0.0.1", port))
  print("p0 waiting for its peer", flush=True)
  peer, _ = server.accept()
  peer.recv(1)  # b'' when the peer's process ends
  for i in range(55):
    print(f"gloo traceback line {i}: Connection closed by peer", flush=True)
  time.sleep(1)  # a real survivor takes seconds to fail; a loaded machine may note it first
  sys.exit(1)
for _ in range(200):
  try:
    conn = socket.create_connection(("127.0.0.1", port))
    break
  except OSError:
    time.sleep(0.05)
print("p1 step 1 done", flush=True)
time.sleep(2 * DELAY)  # process 0's first line is from well before the failure
print("Traceback (most recent call last):", flush=True)
print("RuntimeError: the real error of process 1", flush=True)
HOW
"""


def run_pair(capsys, how):
  code = PAIR.replace("HOW", how).replace("DELAY", str(local.DELAY_SECONDS))
  status = local.run(2, [sys.executable, "-c", code])
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.parametrize(
  "how, status, describe",
  [
    ("os._exit(3)", 3, "exited with status 3"),  # its connections close as it ends
    ("os.kill(os.getpid(), 9)", 128 + 9, "was killed by SIGKILL"),
  ],
)
def test_survivors_collective_failure_is_left_out_and_the_failure_shown(
  capsys, how, status, describe
):
  got, out, err = run_pair(capsys, how)
  assert got == status
  # the failing process in full, and the survivor's output from before the failure
  for line in ("p1 step 1 done", "Traceback (most recent call last):", "RuntimeError: the real"):
    assert f"[p1] {line}" in out
  assert "[p0] p0 waiting for its peer" in out
  assert "gloo traceback" not in out and "gloo" not in err
  (summary,) = err.strip().splitlines()
  # process 0 exits by itself (1) or is killed first (-9), having printed some of its 55 lines
  match = re.fullmatch(
    rf"mdx\.local: process 1 {describe}; stopped the others \(p0=(-9|1)\)(?:, leaving out the "
    r"(\d+) lines they printed as it failed \(their collectives failing without it\))?; "
    r"run the same command to resume from the last complete checkpoint",
    summary,
  )
  assert match, summary
  assert match.group(1) == "-9" or match.group(2) == "55"


def test_output_of_processes_that_succeed_is_all_relayed(capsys):
  code = "import os\nfor i in range(3): print('line', i, 'of', os.environ['MDX_PROCESS_ID'])"
  assert local.run(2, [sys.executable, "-c", code]) == 0
  out, err = capsys.readouterr()
  for rank in (0, 1):
    assert [line for line in out.splitlines() if line.startswith(f"[p{rank}]")] == [
      f"[p{rank}] line {i} of {rank}" for i in range(3)
    ]
  assert err == ""


def test_launcher_gives_its_sigterm_handler_back(capsys):
  before = signal.getsignal(signal.SIGTERM)
  assert local.run(1, [sys.executable, "-c", "pass"]) == 0
  assert signal.getsignal(signal.SIGTERM) is before


def test_lines_arriving_as_a_peer_fails_are_held(capsys):
  """_Output's rule on arrival times: the failing process's lines are printed, the others' from
  DELAY_SECONDS before its end was noted on are held."""
  exits = local._Exits([])
  output = local._Output(exits, 2)
  t = 100.0
  output.pending.extend(
    [
      (t - 2, 0, "p0 long before\n"),
      (t - local.DELAY_SECONDS / 2, 0, "p0 just before\n"),
      (t + 0.01, 1, "p1 last words\n"),
      (t + 0.02, 0, "p0 gloo error\n"),
    ]
  )
  exits.note(1, 3)
  exits.first_at = t
  output._flush(everything=True)
  assert capsys.readouterr().out == "[p0] p0 long before\n[p1] p1 last words\n"
  assert output.held == [["p0 just before\n", "p0 gloo error\n"], []]
