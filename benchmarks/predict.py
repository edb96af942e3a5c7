"""Predict throughput end to end: a folder of PNG films to predictions.csv, mdx beside PyTorch.

  python benchmarks/predict.py [--images=DIR] [--count=64] [--side=1024] [--size=224] [--repeats=3]

Every contestant reads every PNG of the folder, decodes it, resizes it to --size, standardises it,
runs DenseNet-121 (one channel in, 14 findings, random weights: speed does not depend on them) and
writes one CSV row of probabilities per image:
  mdx (Flax)       the bundle predict of `python -m mdx predict --backend=flax`
                   (mdx.inference.predict_files.predict): the bundle's weights restored and
                   checked, the Flax model traced, decoding on threads a chunk ahead, batches of 8
                   per device;
  mdx (StableHLO)  the same predict on the bundle carrying its StableHLO export (`./launch.sh
                   export-model --format=stablehlo`, lowered for cpu, cuda and tpu), which `python
                   -m mdx predict` serves by default: no weights restored, no model built or
                   traced;
  onnxruntime      the same predict with --backend=onnxruntime on the bundle's ONNX export
                   (jax2onnx): one onnxruntime session, the same decoding and files;
  PyTorch          the usual pipeline: a torch DataLoader with one worker process per core, PIL
                   decoding and bilinear resizing, the torchvision-layout DenseNet-121 of
                   classifiers.py in eval mode under torch.inference_mode, batches of 8.
Without --images, --count synthetic 8-bit films of --side px are written first (smooth anatomy-like
shapes plus noise, so PNG compression and decoding cost are those of a film, not of pure noise).
Each run is one command's work: start-up (mdx: loading and checking the bundle, then with Flax
tracing the model, with StableHLO deserializing the export; both compile on the first run and later
runs read the persistent compilation cache as `python -m mdx predict` does; onnxruntime: building
its session; PyTorch: starting its loader workers) and then the films. The start-up is timed on a
folder of one film (a batch of one), and the throughput is the rest: (films - 1) / (time for the
folder - time for one film), medians over --repeats alternating rounds (after a first round that
compiles), so a noisy machine slows all alike. The exports are made once, before the first round.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

FINDINGS = [f"finding_{i}" for i in range(14)]
MEAN, STD = 0.5, 0.25


def write_films(folder: str, count: int, side: int) -> None:
  """count 8-bit grayscale PNGs of side x side px: two lung-like ellipses, ribs, noise."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:side, 0:side] / side
  for i in range(count):
    lungs = sum(
      np.exp(-((((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2) ** 2))
      for cx in (0.32 + 0.02 * rng.normal(), 0.68 + 0.02 * rng.normal())
    )
    ribs = 0.08 * np.sin(2 * np.pi * (yy * 12 + 0.3 * xx + rng.uniform()))
    film = 0.75 - 0.45 * lungs + ribs + 0.03 * rng.normal(size=(side, side))
    Image.fromarray(np.clip(film * 255, 0, 255).astype(np.uint8)).save(
      os.path.join(folder, f"film_{i:05d}.png")
    )


def mdx_bundle(folder: str, size: int, dtype: str) -> str:
  from mdx.inference import bundle as bundle_lib
  from mdx.models import registry

  model_spec = {"name": "densenet121", "num_classes": len(FINDINGS), "dtype": dtype}
  spec = bundle_lib.classification_spec(
    model_spec,
    image_size=size,
    channels=1,
    standardize={"mode": "dataset", "mean": [MEAN], "std": [STD]},
    findings=FINDINGS,
    thresholds={
      "policy": "fixed",
      "description": "benchmark",
      "chosen_on": None,
      "scale": "raw",
      "values": {f: 0.5 for f in FINDINGS},
    },
  )
  variables = registry.random_variables(model_spec, (1, size, size, 1))
  return bundle_lib.write(os.path.join(folder, "bundle"), spec, variables, "# benchmark")


def exported(bundle: str, fmt: str) -> str:
  """A copy of the bundle carrying its `fmt` export (each contestant's bundle holds only what it
  reads, so its digest check is no larger than it must be)."""
  import shutil

  from mdx.inference import export

  copy = f"{bundle}_{fmt}"
  shutil.copytree(bundle, copy)
  export.add_to_bundle(copy, fmt)
  return copy


def mdx_run(bundle: str, images: str, out: str, backend: str) -> int:
  from mdx.inference import predict_files

  return predict_files.predict(bundle, images, out, progress=False, backend=backend)["predicted"]


class _Films:
  """The PyTorch side's dataset: PIL decoding, bilinear resizing, standardisation."""

  def __init__(self, files, size):
    self.files, self.size = files, size

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    import torch

    image = Image.open(self.files[i]).convert("L").resize((self.size, self.size), Image.BILINEAR)
    x = (np.asarray(image, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x)[None], self.files[i]


def torch_run(model, images: str, out: str, size: int, workers: int, dtype: str) -> int:
  """On a GPU: the model there, channels-last, autocast to --dtype when it is bfloat16."""
  import torch

  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cuda and dtype == "bfloat16")
  files = sorted(os.path.join(images, f) for f in os.listdir(images) if f.endswith(".png"))
  loader = torch.utils.data.DataLoader(_Films(files, size), batch_size=8, num_workers=workers)
  os.makedirs(out, exist_ok=True)
  n = 0
  with open(os.path.join(out, "predictions.csv"), "w", newline="") as f, torch.inference_mode():
    writer = csv.writer(f)
    writer.writerow(["path", *FINDINGS])
    for x, names in loader:
      if cuda:
        x = x.to(device, non_blocking=True).to(memory_format=torch.channels_last)
      with autocast:
        probs = torch.sigmoid(model(x).float()).cpu().numpy()
      writer.writerows([name, *(f"{p:.6f}" for p in row)] for name, row in zip(names, probs))
      n += len(names)
  return n


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", default="", help="a folder of PNG films (default: synthetic)")
  parser.add_argument("--count", type=int, default=64, help="synthetic films to write")
  parser.add_argument("--side", type=int, default=1024, help="synthetic films' side in px")
  parser.add_argument("--size", type=int, default=224, help="model input side in px")
  parser.add_argument("--repeats", type=int, default=3, help="runs of each after the first")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
  parser.add_argument("--dtype", default="float32", help="compute dtype: float32 or bfloat16")
  args = parser.parse_args()

  import classifiers as bench  # benchmarks/classifiers.py, beside this script
  import torch

  from mdx import runtime

  runtime.enable_compilation_cache(tempfile.mkdtemp(prefix="mdx_bench_cache_"))
  cores = os.cpu_count() or 1
  torch.set_num_threads(args.threads or cores)
  with tempfile.TemporaryDirectory() as tmp:
    images = args.images
    if not images:
      images = os.path.join(tmp, "films")
      os.makedirs(images)
      write_films(images, args.count, args.side)
    count = len([f for f in os.listdir(images) if f.endswith(".png")])
    if not count:
      raise SystemExit(f"error: no .png files in {images}; pass a folder of PNG films")
    bundle = mdx_bundle(tmp, args.size, args.dtype)
    bundles = {"stablehlo": exported(bundle, "stablehlo"), "onnx": exported(bundle, "onnx")}
    model = bench.torch_densenet121(len(FINDINGS), 1).eval()
    if torch.cuda.is_available():
      model = model.to("cuda", memory_format=torch.channels_last)
    one = os.path.join(tmp, "one")
    os.makedirs(one)
    first = sorted(f for f in os.listdir(images) if f.endswith(".png"))[0]
    os.symlink(os.path.join(os.path.abspath(images), first), os.path.join(one, first))
    out = lambda name, i: os.path.join(tmp, f"{name}_{i}")
    runs = {
      "mdx (Flax)": lambda folder, i: mdx_run(bundle, folder, out("flax", i), "flax"),
      "mdx (StableHLO)": lambda folder, i: mdx_run(
        bundles["stablehlo"], folder, out("stablehlo", i), "jax"
      ),
      "onnxruntime": lambda folder, i: mdx_run(
        bundles["onnx"], folder, out("ort", i), "onnxruntime"
      ),
      "PyTorch": lambda folder, i: torch_run(
        model, folder, os.path.join(tmp, f"torch_{i}"), args.size, cores, args.dtype
      ),
    }
    times = {name: {"one": [], "all": []} for name in runs}
    for i in range(args.repeats + 1):
      for name, run in runs.items():
        for key, folder, n in (("one", one, 1), ("all", images, count)):
          t = time.perf_counter()
          done = run(folder, f"{key}{i}")
          times[name][key].append(time.perf_counter() - t)
          if done != n:
            raise SystemExit(f"error: {name} predicted {done} of {n} films in {folder}")
  print(
    f"{count} PNG films from {args.images or f'synthetic {args.side} px'} at {args.size} px; "
    f"{cores} cores; torch {torch.__version__} with {torch.get_num_threads()} threads and "
    f"{cores} loader workers; malloc: {runtime.allocator()}"
  )
  import onnxruntime

  print(f"onnxruntime {onnxruntime.__version__} on {onnxruntime.get_device()}")
  print(
    f"{'pipeline':<17}{'first start-up s':>17}{'start-up s':>12}{'films/s':>10}{'vs PyTorch':>12}"
    f"{f'{count} films s':>15}"
  )
  rate = {}
  for name, t in times.items():  # round 0 compiled: the medians are over the later rounds
    startup = statistics.median(t["one"][1:])
    rate[name] = statistics.median(
      (count - 1) / (a - o) for a, o in zip(t["all"][1:], t["one"][1:])
    )
    t["row"] = (t["one"][0], startup, rate[name], statistics.median(t["all"][1:]))
  for name, t in times.items():
    first_startup, startup, films_s, total = t["row"]
    print(
      f"{name:<17}{first_startup:>17.2f}{startup:>12.2f}{films_s:>10.1f}"
      f"{films_s / rate['PyTorch']:>12.2f}{total:>15.1f}"
    )


if __name__ == "__main__":
  main()
