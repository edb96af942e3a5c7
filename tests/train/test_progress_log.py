"""The training progress line (mdx.train.loop): no rate or ETA before one is measured (the first
step compiles), an ETA in sane units, and a line before each compile that would otherwise be a
silent minute."""

import logging
import os
import re

import pytest
from absl import flags

from mdx import config as config_lib
from mdx.train import loop, tasks

flags.FLAGS.mark_as_parsed()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
  "seconds, text",
  [
    (None, "--"),
    (float("inf"), "--"),
    (-3.0, "0s"),
    (9.4, "9s"),
    (59.6, "1m00s"),
    (247, "4m07s"),
    (7500, "2h05m"),
    (3 * 86400 + 4 * 3600 + 59, "3d04h"),
  ],
)
def test_eta_in_the_two_largest_units(seconds, text):
  assert loop._format_eta(seconds) == text


def test_no_rate_or_eta_until_a_step_is_timed():
  # the first logged step is the compiling one: 3 steps of 32 left used to read ETA 26666666h40m
  assert loop._speed(0, 0.0, 32, 3) == (None, "-- img/s  ETA --")
  assert loop._speed(0, 75.0, 32, 3) == (None, "-- img/s  ETA --")
  rate, text = loop._speed(9, 4.5, 32, 90)  # 0.5 s a step, 90 steps left
  assert rate == pytest.approx(64.0) and text == "64.0 img/s  ETA 45s"
  # validations to come add their last measured time; they are not in img/s
  assert loop._speed(9, 4.5, 32, 90, pauses=2 * 60.0) == (rate, "64.0 img/s  ETA 2m45s")


@pytest.mark.parametrize(
  "step, total, every, count",
  [(10, 400, 100, 4), (100, 400, 100, 3), (399, 400, 100, 1), (400, 400, 100, 0), (0, 250, 100, 3)],
)
def test_validations_to_come(step, total, every, count):
  """At multiples of checkpoint_every and at the last step (once when it is one)."""
  assert loop._validations_after(step, total, every) == count


@pytest.mark.slow
def test_training_says_when_it_compiles_and_logs_no_eta_before_a_rate(tmp_path, caplog):
  """3 steps logged every step: step 1 (compiling) has no rate, steps 2-3 do; the train and the
  evaluation steps each get a line before they compile and one with the time it took."""
  c = config_lib.load_experiment(os.path.join(ROOT, "experiments/tiny_phantoms.py")).get_config()
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 3, 1, 3
  c = config_lib.resolve(c)
  work = tmp_path / "work"
  work.mkdir()
  with caplog.at_level(logging.INFO):
    loop.train(c, str(work), tasks.make_task(c))
  lines = caplog.messages
  compile_train = next(i for i, m in enumerate(lines) if m.startswith("compiling the train step"))
  first_done = next(i for i, m in enumerate(lines) if m.startswith("first step done in"))
  progress = [m for m in lines if re.match(r"step \d/3  loss", m)]
  assert compile_train < first_done < lines.index(progress[0])
  assert progress[0].endswith("-- img/s  ETA --")
  for line in progress[1:]:
    assert re.search(r"  \d+\.\d img/s  ETA \d+s$", line), line
  compile_eval = next(i for i, m in enumerate(lines) if m.startswith("compiling the evaluation"))
  assert lines[compile_eval + 1].startswith("first evaluation batch done in")
  assert compile_eval > lines.index(progress[-1])
  assert sum(m.startswith("compiling the") for m in lines) == 2  # once each, not per batch
