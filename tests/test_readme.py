"""Every command in README.md's ```bash blocks runs as written, with tiny overrides, in a fresh copy
of the repository, and leaves the files the README promises: the README cannot drift from the code.

How: the commands are read from the README (continuation lines joined, comments dropped, an
optional `[--flag=...]` taken as given). Each must match one rule of RULES, which says which chain
it belongs to, the tiny overrides appended to it, the README placeholders (FILMS, DIR, ...)
replaced by fixtures written here in the real formats, and the files it must leave. A command no
rule matches fails the test: a new README command needs a rule (and so a run) here. The chains are
independent (each in its own copy, run in README order), so xdist runs them side by side; within a
chain a command may use what an earlier one wrote (`runs/a` is trained, then evaluated, exported
and predicted with).

The copy holds the tracked and untracked-but-not-ignored files (what a fresh clone plus the
working tree's edits would have); commands run with the test's venv (MDX_VENV) on PATH, as a user
who ran `source .venv/bin/activate` would. gcloud, sbatch and srun are stand-ins on PATH: there is
no TPU or SLURM cluster here (the stand-in srun runs the command as SLURM's one task, with SLURM's
variables, so jax's SLURM detection and the script's launch.sh call are real).

Full tier (slow): about 10 minutes of training on 2 cores.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# Tiny overrides shared by the rules: a seconds-long classifier and U-Net.
TINY_CLS = (
  "--config.train.steps=2 --config.train.batch_size=8 --config.train.log_every=1 "
  "--config.train.checkpoint_every=2 --config.data.num_patients=40 --config.data.image_size=32 "
  "--config.model.name=densenet_tiny --config.data.workers=0 --config.eval.batch_size=16 "
  "--config.eval.bootstrap=10 --config.eval.examples=2"
)
TINY_EVAL = "--config.eval.bootstrap=10 --config.eval.examples=2"
TINY_SET = (
  "--config.train.steps=2 --config.train.batch_size=8 --config.train.checkpoint_every=2 "
  "--config.data.workers=0 --config.eval.examples=2"
)
TINY_SET_CLS = TINY_SET + " --config.eval.bootstrap=10 --paired_resamples=20"
TINY_REAL = (
  "--config.train.steps=2 --config.train.batch_size=8 --config.train.checkpoint_every=2 "
  "--config.model.name=densenet_tiny --config.data.workers=0 --config.eval.batch_size=16 "
  "--config.eval.bootstrap=10 --config.eval.examples=2"
)
TINY_UNET = (
  "--config.train.steps=2 --config.train.batch_size=2 --config.train.checkpoint_every=2 "
  "--config.model.base_width=4 --config.model.depth=2 --config.data.patch_size=8,8,8 "
  "--config.eval.batch_size=2 --config.eval.examples=1"
)


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # re.search over the README command
  chain: str = ""  # commands of one chain run in one copy, in README order
  extra: str = ""  # appended to the command
  subs: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to the command
  expect: tuple[str, ...] = ()  # files (relative to the copy) the command must leave
  skip: str = ""  # why this command is not run here (said in the test's output)


RULES = [
  Rule(
    r"^\./launch\.sh demo\b",
    "demo",
    TINY_CLS,
    expect=("runs/demo/report/report.html", "runs/demo/bundle/bundle.json"),
  ),
  Rule(r"^\./launch\.sh test\b", skip="the test suite itself: CI runs it"),
  # Running experiments: train, eval (the run's own config), the same without launch.sh
  Rule(
    r"^\./launch\.sh train experiments/cxr_phantoms\.py --workdir=runs/a",
    "run_a",
    TINY_CLS,
    expect=("runs/a/config.json", "runs/a/report/report.html", "runs/a/bundle/bundle.json"),
  ),
  Rule(
    r"^\./launch\.sh eval +experiments/cxr_phantoms\.py --workdir=runs/a",
    "run_a",
    TINY_EVAL,
    expect=("runs/a/report/report.html", "runs/a/evaluated_checkpoint.json"),
  ),
  Rule(
    r"^python -m mdx main --config=experiments/cxr_phantoms\.py --workdir=runs/a",
    "run_a",
    TINY_CLS,
    expect=("runs/a/report/report.html",),
  ),
  Rule(
    r"^\./launch\.sh sweep experiments/ablations/pretraining\.py",
    "sweep_pretraining",
    # densenet_small: DenseNet-121's four blocks (the ablation freezes from:block4), CPU-sized
    TINY_SET_CLS + " --config.data.image_size=32 --config.model.name=densenet_small",
    expect=("runs/ablation/results.md",),
  ),
  Rule(
    r"^\./launch\.sh sweep experiments/ablations/unet_width\.py",
    "sweep_unet",
    TINY_SET + " --config.data.patch_size=16,16,16 --only=width_4,width_8",
    expect=("runs/unet_width/results.md",),
  ),
  Rule(
    r"^\./launch\.sh sweep experiments/ablations/imbalance\.py",
    "sweep_imbalance",
    TINY_SET_CLS + " --seeds=0 --config.data.num_patients=60 --config.data.image_size=32 "
    "--config.model.name=densenet_tiny",
    expect=("runs/imbalance/results.md", "runs/imbalance/ablation.md", "docs/ablations.md"),
  ),
  # Scaling out (stand-ins for gcloud, sbatch and srun; the local command for real)
  Rule(r"^\./launch\.sh tpu ", "scale", expect=("gcloud.log",)),
  Rule(
    r"^\./launch\.sh local 2 train experiments/tiny_phantoms\.py",
    "scale",
    "--config.train.steps=2 --config.eval.bootstrap=10",
    expect=("runs/two/report/report.html",),
  ),
  Rule(
    r"^sbatch .*experiments/slurm\.sbatch train",
    "scale",
    TINY_REAL,
    subs=((r"--workdir=\S+", "--workdir=runs/slurm"),),
    expect=("runs/slurm/report/report.html", "srun.log"),
  ),
  # Real data: NIH layout fixtures (MDX_DATA), metadata tables, reader studies
  Rule(r"^\./launch\.sh prepare experiments/nih_64px\.py", "nih"),
  Rule(
    r"^\./launch\.sh train experiments/nih_64px\.py",
    "nih",
    TINY_REAL,
    expect=("runs/nih64/report/report.html",),
  ),
  Rule(
    r"^python -m mdx split ",
    "tables",
    expect=("splits/train.csv", "splits/validation.csv", "splits/test.csv"),
  ),
  Rule(r"^python -m mdx audit ", "tables"),
  Rule(
    r"^python -m mdx consensus ",
    "tables",
    expect=("reference/labels.csv", "reference/agreement.json"),
  ),
  # Chest X-ray datasets in one label space (the MIMIC table: the committed fixture slice)
  Rule(r"^python -m mdx findings --source=padchest", "tables"),
  Rule(
    r"^python -m mdx card --source=mimic",
    "tables",
    subs=(
      (
        r"MIMIC/mimic-cxr-2\.0\.0-chexpert\.csv\.gz",
        "tests/data/cxr/fixtures/mimic/mimic-cxr-2.0.0-chexpert.csv",
      ),
    ),
    expect=("cards/mimic/card.json", "cards/mimic/card.md"),
  ),
  Rule(
    r"^\./launch\.sh train experiments/multi_cxr_phantoms\.py --workdir=runs/multi",
    "run_a",
    "--config.train.steps=2 --config.data.workers=0 --config.eval.bootstrap=10 "
    "--config.eval.examples=2",
    expect=("runs/multi/per_dataset_metrics.json", "runs/multi/bundle/bundle.json"),
  ),
  Rule(
    r"^python -m mdx generalisation --bundles=runs/a/bundle,runs/multi/bundle",
    "run_a",
    "--bootstrap=20",
    expect=("matrix/matrix.md", "matrix/matrix.csv", "matrix/figures/macro_auroc.png"),
  ),
  Rule(
    r"^python -m mdx evaluate --labels=",
    "tables",
    "--bootstrap=20",
    expect=("eval/metrics.json", "eval/report.html"),
  ),
  # Bundles: predict, export, external validation, published weights
  Rule(
    r"^\./launch\.sh predict --bundle=runs/a/bundle",
    "run_a",
    subs=((r"FILMS", "films"), (r"\bOUT\b", "out")),
    expect=("out/predictions.csv", "out/errors.csv"),
  ),
  Rule(
    r"^\./launch\.sh export experiments/cxr_phantoms\.py --workdir=runs/a",
    "run_a",
    subs=((r"--step=\d+", "--step=2"),),
    expect=("bundles/a400/bundle.json",),
  ),
  Rule(
    r"^python -m mdx evaluate --bundle=runs/a/bundle",
    "run_a",
    "--bootstrap=20",
    subs=((r"OTHER_HOSPITAL", "other_hospital"),),
    expect=("external/report.html",),
  ),
  Rule(r"^python -m mdx from_weights ", "weights", expect=("bundles/xrv/bundle.json",)),
  # Deploying without mdx: the demo's bundle exported to ONNX, then the standalone script
  Rule(
    r"^\./launch\.sh export-model --bundle=runs/demo/bundle --format=onnx",
    "demo",
    expect=("runs/demo/bundle/export/model.onnx",),
  ),
  Rule(
    r"^\./launch\.sh export-model --bundle=runs/demo/bundle --format=stablehlo",
    "demo",
    expect=("runs/demo/bundle/export/model.stablehlo",),
  ),
  Rule(
    r"^python docs/deploy_onnx\.py ",
    "demo",
    subs=((r"\bFILMS\b", "films"),),
    expect=("deployed/predictions.csv", "deployed/errors.csv"),
  ),
  Rule(  # tests/inference/test_engines.py compares the two files' numbers
    r"^\./launch\.sh predict --bundle=runs/demo/bundle",
    "demo",
    subs=((r"\bFILMS\b", "films"),),
    expect=("by_mdx/predictions.csv",),
  ),
  # Models and transfer learning
  Rule(r"^python -m mdx import_weights ", "weights"),
  Rule(
    r"^\./launch\.sh train experiments/finetune_phantoms\.py",
    "weights",
    TINY_REAL.replace("--config.model.name=densenet_tiny ", "")
    + " --config.data.image_size=32 --config.data.num_patients=40",
    expect=("runs/ft/report/report.html",),
  ),
  Rule(
    r"^python benchmarks/classifiers\.py\b",
    "weights",
    "--models=densenet_tiny --resolutions=32 --batch=2 --steps=1 --repeats=1",
  ),
  # 3D segmentation (an MSD folder named as the Decathlon names it: its task's classes and mirror)
  Rule(
    r"^\./launch\.sh fingerprint --config=experiments/msd_hippocampus\.py",
    "hippo",
    subs=((r"=DIR\b", "=Task04_Hippocampus"),),
  ),
  Rule(
    r"^\./launch\.sh train experiments/msd_hippocampus\.py",
    "hippo",
    TINY_UNET,
    subs=((r"=DIR\b", "=Task04_Hippocampus"),),
    expect=("runs/hippo/bundle/bundle.json", "runs/hippo/plan.json"),
  ),
  Rule(
    r"^\./launch\.sh predict --bundle=runs/hippo/bundle",
    "hippo",
    subs=((r"SCANS", "Task04_Hippocampus/imagesTr"), (r"\bOUT\b", "hippo_out")),
  ),
  Rule(
    r"^\./launch\.sh crossval experiments/msd_hippocampus\.py",
    "hippo_cv",
    TINY_UNET,
    subs=((r"=DIR\b", "=Task04_Hippocampus"), (r"--folds=\d+", "--folds=2")),
    expect=("runs/hippo_cv/crossval/results.md", "runs/hippo_cv/bundle/bundle.json"),
  ),
  Rule(
    r"^\./launch\.sh sweep experiments/ablations/nnunet_parts\.py",
    "nnunet_parts",
    TINY_UNET,
    subs=((r"=DIR\b", "=Task04_Hippocampus"),),
    expect=("runs/nnunet_parts/results.md",),
  ),
]


def readme_commands(text: str) -> list[str]:
  """The commands of the ```bash blocks: continuations joined, comments and blank lines dropped,
  `[--optional=...]` kept as given."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = re.sub(r"(^|\s)#.*$", "", line).strip()
      if line:
        commands.append(re.sub(r"\[(--[^\]]+)\]", r"\1", line))
  return commands


def rule_of(command: str) -> Rule | None:
  return next((r for r in RULES if re.search(r.pattern, command)), None)


def test_every_readme_command_has_a_rule():
  """A command the README shows and no rule runs would drift unseen."""
  commands = readme_commands(open(README).read())
  assert len(commands) > 20
  missing = [c for c in commands if rule_of(c) is None]
  assert not missing, f"README commands without a rule in tests/test_readme.py: {missing}"
  unused = [r.pattern for r in RULES if not any(re.search(r.pattern, c) for c in commands)]
  assert not unused, f"rules for commands the README no longer shows: {unused}"


# ------------------------------------------------------------------------------ the copy
def _copy_repo(dest: str) -> None:
  """The checkout as a fresh clone of it would be, with the working tree's edits committed."""
  files = (
    subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=ROOT,
      capture_output=True,
      check=True,
    )
    .stdout.decode()
    .split("\0")
  )
  for name in filter(None, files):
    src = os.path.join(ROOT, name)
    if os.path.isfile(src):  # a file deleted in the working tree is still listed
      os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, name))  # mtimes kept: launch.sh sees no new pyproject
  git = ["git", "-c", "user.name=mdx", "-c", "user.email=mdx@localhost"]
  for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
    subprocess.run(git + args, cwd=dest, check=True, capture_output=True)


def _stand_ins(bin_dir: str) -> None:
  """gcloud records its calls; sbatch runs the script as SLURM would (in the submit dir, with the
  job's variables), and srun runs the command as the step's only task."""
  os.makedirs(bin_dir)
  scripts = {
    "gcloud": 'echo "gcloud $*" >> "$MDX_README_COPY/gcloud.log"\n',
    "sbatch": (
      'while [[ "$1" == --* ]]; do shift; done\n'
      'export SLURM_SUBMIT_DIR="$PWD" SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=1\n'
      "export MDX_ACCELERATOR=cpu  # the script asks for cuda unless told; no GPU here\n"
      'exec bash "$@"\n'
    ),
    "srun": (
      'echo "srun $*" >> "$MDX_README_COPY/srun.log"\n'
      'while [[ "$1" == --* ]]; do shift; done\n'
      "export SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_STEP_NUM_NODES=1 "
      "SLURM_STEP_NODELIST=localhost\n"
      'exec "$@"\n'
    ),
  }
  for name, body in scripts.items():
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
      f.write("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    os.chmod(path, 0o755)


# ------------------------------------------------------------------------------ fixtures per chain
def _png(path: str, size: int, seed: int, mode: str = "L") -> None:
  from PIL import Image

  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  img = 120 + 60 * np.sin(6 * x + seed) * np.cos(5 * y) + rng.normal(0, 10, (size, size))
  arr = np.clip(img, 0, 255).astype(np.uint8)
  Image.fromarray(arr).convert(mode).save(path)


def _write_csv(path: str, header: list[str], rows: list) -> None:
  opener = gzip.open if path.endswith(".gz") else open
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with opener(path, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"]  # fmt: skip
NIH_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                "Pleural_Thickening", "Hernia"]  # fmt: skip


def _nih_rows(patients: int, per_patient: int, seed: int) -> list:
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(1, patients + 1):
    for k in range(per_patient):
      found = [f for f in NIH_FINDINGS if rng.random() < 0.15]
      rows.append((f"{p:08d}_{k:03d}.png", "|".join(found) or "No Finding", k, p,
                   int(rng.integers(20, 80)), "MF"[p % 2], "PA"))  # fmt: skip
  return rows


def _fixtures_nih(copy: str) -> dict:
  data = os.path.join(copy, "data_fixture")
  rows = _nih_rows(patients=30, per_patient=2, seed=0)
  for i, row in enumerate(rows):
    _png(os.path.join(data, "nih_chestxray14_64px", "images", row[0]), 64, i, mode="RGB")
  _write_csv(os.path.join(data, "nih_chestxray14_64px", "Data_Entry.csv"), NIH_COLUMNS, rows)
  return {"MDX_DATA": data}


def _fixtures_tables(copy: str) -> dict:
  # full-scale metadata: enough patients for --test-size=1000 --val-size=1000
  _write_csv(os.path.join(copy, "Data_Entry_2017_v2020.csv.gz"), NIH_COLUMNS,
             _nih_rows(patients=3000, per_patient=2, seed=1))  # fmt: skip
  rng = np.random.default_rng(2)
  findings = ["Effusion", "Mass"]
  truth = rng.integers(0, 2, (60, 2))
  for r in range(1, 4):
    reads = np.where(rng.random(truth.shape) < 0.85, truth, 1 - truth)
    _write_csv(os.path.join(copy, f"reader{r}.csv"), ["image", *findings],
               [[f"img{i}", *map(int, row)] for i, row in enumerate(reads)])  # fmt: skip
  probs = np.clip(truth * 0.4 + rng.random(truth.shape) * 0.6, 0, 1)
  labels = [[f"img{i}", f"p{i // 2}", *map(int, row)] for i, row in enumerate(truth)]
  _write_csv(os.path.join(copy, "labels.csv"), ["image", "patient_id", *findings], labels)
  _write_csv(os.path.join(copy, "probs.csv"), ["image", *findings],
             [[f"img{i}", *row] for i, row in enumerate(probs.round(4))])  # fmt: skip
  return {}


def _fixtures_run_a(copy: str) -> dict:
  for i in range(3):
    _png(os.path.join(copy, "films", f"film{i}.png"), 96, i)
  for cls in ("NORMAL", "PNEUMONIA"):
    for p in range(8):
      kind = "" if cls == "NORMAL" else "_bacteria"
      name = f"person{p}{kind}_{p}.jpeg"
      _png(os.path.join(copy, "other_hospital", cls, name), 80, p + 10 * (cls == "NORMAL"))
  return {}


def _fixtures_kermany(copy: str) -> dict:
  """The pediatric pneumonia folders experiments/pneumonia_folder.py reads from MDX_DATA (the
  generalisation matrix's third dataset): its file names carry the patient."""
  data = os.path.join(copy, "data_fixture", "kermany_pneumonia_subset")
  for cls in ("NORMAL", "PNEUMONIA"):
    for p in range(10):
      name = f"IM-{p:04d}-0001.jpeg" if cls == "NORMAL" else f"person{p}_bacteria_{p}.jpeg"
      _png(os.path.join(data, cls, name), 72, 3 * p + (cls == "NORMAL"))
  return {}


def _fixtures_weights(copy: str) -> dict:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  os.environ.setdefault("KERAS_BACKEND", "torch")  # as tests/models/test_import_weights.py
  import keras
  import torch
  from torch_reference import TorchDenseNet

  torch.manual_seed(0)
  ref = TorchDenseNet(18, blocks=(6, 12, 24, 16), growth=32, init=64, bn_size=4)
  torch.save({"module." + k: v for k, v in ref.state_dict().items()}, os.path.join(copy, "xrv.pt"))
  keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(64, 64, 3)).save(
    os.path.join(copy, "densenet121_weights.h5")
  )
  return {}


def _fixtures_hippo(copy: str) -> dict:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from fixture_files import write_msd

  write_msd(
    os.path.join(copy, "Task04_Hippocampus"), np.diag([1.0, 1.0, 1.0, 1.0]), n=6, shape=(16, 16, 16)
  )
  return {}


FIXTURES = {  # chain -> the fixture writers it needs (each returns environment variables)
  "demo": (_fixtures_run_a,),  # films/ for docs/deploy_onnx.py
  "nih": (_fixtures_nih,),
  "scale": (_fixtures_nih,),  # the SLURM example trains experiments/nih_64px.py
  "tables": (_fixtures_tables,),
  # the generalisation matrix reads NIH and pneumonia folders from MDX_DATA
  "run_a": (_fixtures_run_a, _fixtures_nih, _fixtures_kermany),
  "weights": (_fixtures_weights,),
  "hippo": (_fixtures_hippo,),
  "hippo_cv": (_fixtures_hippo,),
  "nnunet_parts": (_fixtures_hippo,),
}


def _chains() -> list[str]:
  commands = readme_commands(open(README).read())
  out = []
  for c in commands:
    rule = rule_of(c)
    if rule and rule.chain and rule.chain not in out:
      out.append(rule.chain)
  return out


@pytest.mark.slow
@pytest.mark.parametrize("chain", _chains())
def test_readme_commands_run(chain, tmp_path):
  copy = str(tmp_path / "mdx")
  _copy_repo(copy)
  bin_dir = str(tmp_path / "bin")
  _stand_ins(bin_dir)
  venv = os.path.dirname(os.path.dirname(sys.executable))
  env = dict(
    os.environ,
    MDX_VENV=venv,
    MDX_README_COPY=copy,
    MDX_RECORDS=str(tmp_path / "records"),
    PATH=os.pathsep.join([bin_dir, os.path.join(venv, "bin"), os.environ.get("PATH", "")]),
    PYTHONUNBUFFERED="1",
  )
  env.pop("XLA_FLAGS", None)
  for write in FIXTURES.get(chain, ()):
    env.update(write(copy))
  ran = []
  for command in readme_commands(open(README).read()):
    rule = rule_of(command)
    if rule.chain != chain:
      continue
    for pattern, replacement in rule.subs:
      command = re.sub(pattern, replacement, command)
    command = f"{command} {rule.extra}".strip()
    proc = subprocess.run(
      ["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
      f"README command failed ({proc.returncode}): {command}\n"
      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )
    missing = [f for f in rule.expect if not os.path.exists(os.path.join(copy, f))]
    assert not missing, f"{command}: promised files missing: {missing}"
    ran.append(shlex.split(command)[0:3])
  assert ran, f"chain {chain} ran no command"
  if chain == "scale":  # what the stand-in gcloud was asked to do
    log = open(os.path.join(copy, "gcloud.log")).read()
    assert "tpu-vm scp" in log and "tpu-vm ssh" in log and "./launch.sh train" in log, log
