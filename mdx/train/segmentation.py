"""3D segmentation (MSD, BraTS, brain phantoms) as a task for the generic training loop.

Training sees random sub-volumes (config.data.patch_size) of standardised cases, sampled to limit
background; validation, test and --mode=predict run whole scans through Gaussian-weighted sliding
windows of the same size, batched over the device mesh. Labels are classes (softmax) or, for
BraTS-style data with data.label_mode='regions', the nested tumour regions (sigmoid).
"""

from __future__ import annotations

import os

import grain
import jax
import numpy as np
from absl import logging

from mdx import losses, runtime
from mdx.data.volume import brats, nifti
from mdx.data import pipeline, splits
from mdx.data.volume import transforms as vt
from mdx.evaluate import segmentation as seg_metrics
from mdx.models import registry
from mdx.train import optim, steps
from mdx.inference.sliding_window import sliding_window_inference

SOURCES = ("msd", "brats", "brain_phantoms")
SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def make_source(data, seed: int):
  """config.data -> a segmentation source (records: image [D,H,W,C], label, case_id, affine)."""
  name = data.source
  if name == "msd":
    from mdx.data.volume import msd
    names = tuple(data.get("class_names") or ()) or None
    return msd.MSDSource(data.root, class_names=names, cache=bool(data.get("cache", False)))
  if name == "brats":
    return brats.BraTSSource(data.root, label_mode=data.get("label_mode", "regions"))
  if name == "brain_phantoms":
    from mdx.data.volume import brain_phantoms
    return brain_phantoms.BrainPhantoms(data.get("num_cases", 32), tuple(data.get("shape", (48,) * 3)),
                                        seed=seed, label_mode=data.get("label_mode", "regions"))
  raise ValueError(f"config.data.source={name!r} is unknown for segmentation; choose one of {SOURCES}")


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
  """Binary (WT, TC, ET) maps [D, H, W, 3] -> BraTS labels {0, 1, 2, 4} (nested, ET wins)."""
  wt, tc, et = (regions[..., i].astype(bool) for i in range(3))
  out = np.where(wt, 2, 0)
  out = np.where(tc, 1, out)
  return np.where(et, 4, out).astype(np.uint8)


class LoadCase:
  """Index -> standardised case {'image', 'label'} (a picklable grain map for worker processes)."""

  def __init__(self, source, standardize: str):
    self.source, self.standardize = source, standardize

  def __call__(self, index) -> dict:
    record = self.source[int(index)]
    return {"image": vt.standardize(record["image"], self.standardize), "label": record["label"]}


class SegmentationTask:

  def __init__(self, config):
    self.config = config
    data = config.data
    self.source = make_source(data, config.seed)
    self.class_names = tuple(self.source.class_names or ())
    if not self.class_names:
      raise ValueError("config.data.class_names is needed for an MSD folder without dataset.json "
                       "(e.g. ('background', 'anterior', 'posterior'))")
    self.regions = data.source in ("brats", "brain_phantoms") and data.get("label_mode") == "regions"
    self.activation = "sigmoid" if self.regions else "softmax"
    if config.model.num_classes != len(self.class_names):
      raise ValueError(f"config.model.num_classes={config.model.num_classes} but the data has "
                       f"{len(self.class_names)} outputs {self.class_names}")
    self.patch = tuple(int(s) for s in data.patch_size)
    fractions = {k: v for k, v in (("test", data.split.test), ("validation", data.split.val)) if v}
    self.splits = splits.patient_split(self.source.patient_ids(), fractions, seed=config.seed)
    for name in ("test", "validation"):
      self.splits.setdefault(name, np.zeros(0, np.int64))
    logging.info("Splits by case: %s", {k: len(v) for k, v in self.splits.items()})
    self.num_channels = self.source.num_channels or self.source[0]["image"].shape[-1]
    self._predict = None

  # --- the task interface (see mdx/train/tasks.py) ---

  def model(self, bn_axis_name):
    cfg = self.config.model.to_dict()
    for key in ("init_from", "freeze"):
      cfg.pop(key, None)
    return registry.create_from_config(cfg, bn_axis_name=bn_axis_name)

  def sample_input(self) -> np.ndarray:
    return np.zeros((1, *self.patch, self.num_channels), np.float32)

  def init_variables(self, params, batch_stats):
    return params, batch_stats

  def optimizer(self, params):
    return optim.make_optimizer(self.config.train)

  def loss(self, logits, batch):
    c = self.config.loss
    if c.name not in ("dice", "dice_ce"):
      raise ValueError(f"config.loss.name={c.name!r}; segmentation uses 'dice' or 'dice_ce'")
    return losses.soft_dice_loss(
        logits, batch["label"], self.activation, epsilon=c.get("epsilon", 1e-5),
        squared=c.get("squared", False), include_background=c.get("include_background", True),
        ce_weight=c.get("ce_weight", 1.0) if c.name == "dice_ce" else 0.0)

  def train_transforms(self) -> list:
    d = self.config.data
    out = [vt.RandomSubVolume(self.patch, max_background=d.get("max_background", 0.95),
                              foreground_rate=d.get("foreground_rate", 0.33))]
    if d.get("flip_axes"):
      out.append(vt.RandomFlip3D(tuple(d.flip_axes)))
    if d.get("rotate_degrees", 0):
      out.append(vt.RandomRotate3D(d.rotate_degrees, p=d.get("rotate_p", 0.3)))
    if d.get("intensity_scale", 0) or d.get("intensity_shift", 0):
      out.append(vt.RandomIntensity(d.get("intensity_scale", 0.0), d.get("intensity_shift", 0.0)))
    return out

  def train_data(self, process_index: int, process_count: int):
    data, train = self.config.data, self.config.train
    if train.batch_size % process_count:
      raise ValueError(f"global batch {train.batch_size} does not divide over {process_count} processes")
    indices = np.asarray(self.splits["train"], np.int64)
    stream = pipeline.EpochStream(pipeline.ShuffledEpochs(indices, self.config.seed),
                                  positions=train.steps * train.batch_size)
    ds = grain.MapDataset.source(stream).seed(self.config.seed)[process_index::process_count]
    ds = ds.map(LoadCase(self.source, data.standardize))
    for t in self.train_transforms():
      ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
    ds = ds.map(vt.KeepKeys(("image", "label")))
    ds = ds.batch(train.batch_size // process_count, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if data.workers else 2,
                                              prefetch_buffer_size=data.prefetch))
    if data.workers:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers,
                                                       per_worker_buffer_size=data.prefetch))
    return it

  # --- whole-scan inference ---

  def _predict_fn(self, evaluator):
    if self._predict is None:
      self._predict = steps.make_predict_step(self.model(runtime.DATA), evaluator.mesh)

    def fn(batch):
      logits = self._predict(evaluator.state, runtime.shard_batch({"image": batch}, evaluator.mesh))
      logits = np.asarray(runtime.to_host(logits))
      return np.asarray(jax.nn.softmax(logits, -1) if self.activation == "softmax"
                        else jax.nn.sigmoid(logits))
    return fn

  def predict_volume(self, evaluator, image: np.ndarray) -> np.ndarray:
    """Raw image [D, H, W, C] -> predicted label map (classes [D,H,W] or regions [D,H,W,R])."""
    ev = self.config.eval
    probs = sliding_window_inference(
        self._predict_fn(evaluator), vt.standardize(image, self.config.data.standardize),
        self.patch, overlap=ev.get("overlap", 0.5), batch_size=ev.batch_size)
    if self.activation == "softmax":
      return probs.argmax(-1).astype(np.int32)
    return (probs > 0.5).astype(np.uint8)

  def evaluate_split(self, evaluator, split: str, overlay_dir: str | None = None):
    indices = self.splits[SPLIT_NAMES[split]]
    if len(indices) == 0:
      raise ValueError(f"the {split} split is empty; set config.data.split.{'val' if split.startswith('val') else split}")
    per_case, overlays = {}, []
    for n, i in enumerate(indices):
      record = self.source[int(i)]
      pred = self.predict_volume(evaluator, record["image"])
      per_case[record["case_id"]] = seg_metrics.case_metrics(
          pred, record["label"], self.class_names, self.regions, record["spacing"],
          with_hd95=overlay_dir is not None)
      if overlay_dir and n < self.config.eval.examples:
        path = os.path.join(overlay_dir, f"{record['case_id']}.png")
        seg_metrics.overlay_png(path, record["image"], record["label"], pred, self.class_names,
                                self.regions, title=record["case_id"])
        overlays.append(path)
    return per_case, overlays

  def validate(self, evaluator) -> dict[str, float]:
    per_case, _ = self.evaluate_split(evaluator, "validation")
    summary = seg_metrics.summarize(per_case)
    out = {"val_dice": summary["mean_dice"]}
    for name, s in summary["per_class"].items():
      if name != "background":
        out[f"val_dice_{name}"] = s["dice"]
    return out

  def finalize(self, evaluator, workdir: str, history: list[dict]) -> str:
    split = self.config.eval.split
    if len(self.splits[SPLIT_NAMES[split]]) == 0:
      logging.info("The %s split is empty; reporting on the validation split", split)
      split = "validation"
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    per_case, overlays = self.evaluate_split(evaluator, split, os.path.join(out_dir, "overlays"))
    summary = seg_metrics.summarize(per_case)
    summary["split"] = split
    seg_metrics.write_metrics(os.path.join(out_dir, "metrics.json"), per_case, summary)
    figures = [seg_metrics.curves_png(history, os.path.join(out_dir, "curves.png"))] if history else []
    seg_metrics.write_report(os.path.join(out_dir, "report.md"), summary, figures + overlays)
    logging.info("%s: mean Dice %.4f; per class %s", split, summary["mean_dice"],
                 {k: round(v["dice"], 4) for k, v in summary["per_class"].items()})
    return out_dir

  def predict_files(self, evaluator, input_dir: str, output_dir: str) -> str:
    """One label NIfTI per input scan, same file name, the input's affine."""
    from mdx.data.volume import msd
    if self.config.data.source == "brats":  # one folder per case: write CASE.nii.gz
      scans = brats.BraTSSource(input_dir, label_mode=self.config.data.get("label_mode", "regions"),
                                require_labels=False)
    else:
      scans = msd.ScanFolder(input_dir, self.num_channels)
    os.makedirs(output_dir, exist_ok=True)
    for i in range(len(scans)):
      record = scans[i]
      pred = self.predict_volume(evaluator, record["image"])
      if self.regions:
        pred = regions_to_labels(pred)
      elif self.config.data.source in ("brats", "brain_phantoms"):
        pred = np.where(pred == 3, 4, pred)
      path = os.path.join(output_dir, record.get("file_name", f"{record['case_id']}.nii.gz"))
      nifti.save_nifti(path, pred, record["affine"])
      logging.info("Wrote %s", path)
    return output_dir
