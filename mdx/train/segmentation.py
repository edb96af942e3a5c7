"""3D segmentation (MSD, BraTS, brain phantoms) as a task for the generic training loop.

Training sees random sub-volumes (config.data.patch_size) of standardised cases, sampled to limit
background; validation and test run whole scans through Gaussian-weighted sliding windows of the
same size, batched over the device mesh (mdx.inference.segmenter, the path a bundle predicts
with). Labels are classes (softmax) or, for BraTS-style data with data.label_mode='regions', the
nested tumour regions (sigmoid).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from mdx import config as config_lib
from mdx import losses, runtime
from mdx.data import pipeline, prepare, sources, splits
from mdx.data.volume import transforms as vt
from mdx.evaluate import segmentation as seg_metrics
from mdx.inference import bundle as bundle_lib
from mdx.inference import predict as inference_predict
from mdx.inference import segmenter
from mdx.models import registry
from mdx.train import optim, tasks


class SegmentationTask:
  """Voxel labels of 3D scans: exclusive classes (softmax) or nested regions (sigmoid)."""

  # its config (defaults and checks) is mdx.config.TASKS["segmentation"]
  source_kind = sources.VOLUME
  bundle_kind = segmenter.KIND

  @classmethod
  def headline(cls, report_dir: str) -> dict:
    with open(os.path.join(report_dir, "metrics.json")) as f:
      summary = json.load(f)["summary"]
    out = {"mean Dice": (summary["mean_dice"], None)}
    for name, s in summary["per_class"].items():
      if name != "background":
        out[f"Dice {name}"] = (s["dice"], None)
    return out

  def __init__(self, config, workdir: str | None = None):
    """workdir receives the lists of skipped or constant scans (mdx.data.check). An unset
    config.model.num_classes becomes the source's number of classes (or regions), in place."""
    self.config = config
    data = config.data
    # source, every case checked (a damaged or NaN scan fails now, not in training or validation,
    # where it would score as all background), split by case: mdx.data.prepare, as classification
    prepared = prepare.prepare_dataset(data, config.seed, sources.VOLUME, workdir)
    self.source, self.record_check = prepared.source, prepared.check
    self.class_names = tuple(self.source.class_names or ())
    if not self.class_names:
      raise ValueError(
        "config.data.class_names is needed for an MSD folder without dataset.json "
        "(e.g. ('background', 'anterior', 'posterior'))"
      )
    self.regions = self.source.label_mode == "regions"
    self.activation = "sigmoid" if self.regions else "softmax"
    config_lib.resolve_num_classes(config, self.class_names)
    self.patch = tuple(int(s) for s in data.patch_size)
    self.splits = prepared.splits  # by patient (one per case)
    for name in ("test", "validation"):
      self.splits.setdefault(name, np.zeros(0, np.int64))
    logging.info("Splits by case: %s", {k: len(v) for k, v in self.splits.items()})
    self.num_channels = self.source.num_channels or self.source[0]["image"].shape[-1]
    self._predict = None

  # --- the task interface (see mdx/train/tasks.py) ---

  def model(self, bn_axis_name):
    return registry.create_from_config(self.config.model, bn_axis_name=bn_axis_name)

  def sample_input(self) -> np.ndarray:
    return np.zeros((1, *self.patch, self.num_channels), np.float32)

  def init_variables(self, params, batch_stats):
    return params, batch_stats

  def optimizer(self, params):
    return optim.make_optimizer(self.config.train)

  def loss(self, logits, batch):
    c = self.config.loss
    return losses.soft_dice_loss(
      logits,
      batch["label"],
      self.activation,
      epsilon=c.epsilon,
      squared=c.squared,
      include_background=c.include_background,
      ce_weight=c.ce_weight if c.name == "dice_ce" else 0.0,
    )

  def train_transforms(self) -> list:
    d = self.config.data
    out = [
      vt.RandomSubVolume(
        self.patch, max_background=d.max_background, foreground_rate=d.foreground_rate
      )
    ]
    if d.flip_axes:
      out.append(vt.RandomFlip3D(tuple(d.flip_axes)))
    if d.rotate_degrees:
      out.append(vt.RandomRotate3D(d.rotate_degrees, p=d.rotate_p))
    if d.intensity_scale or d.intensity_shift:
      out.append(vt.RandomIntensity(d.intensity_scale, d.intensity_shift))
    return out + [vt.KeepKeys(("image", "label", "index"))]

  def record_names(self, indices) -> list[str]:
    """Case ids of source records (for messages)."""
    ids = self.source.case_ids()
    return [str(ids[int(i)]) for i in indices]

  def train_data(self, geometry, start_step: int = 0):
    data = self.config.data
    return pipeline.train_dataset(
      vt.LoadCase(self.source, data.standardize),
      pipeline.epochs(self.splits["train"], self.config.seed),
      batch_size=geometry.global_batch,
      steps=self.config.train.steps,
      transforms=self.train_transforms(),
      seed=self.config.seed,
      start_step=start_step,
      process_index=geometry.process_index,
      process_count=geometry.process_count,
      workers=data.workers,
      prefetch=data.prefetch,
    )

  # --- whole-scan inference ---

  def _predict_fn(self, evaluator):
    if self._predict is None:
      self._predict = inference_predict.make_predict_fn(
        self.model(runtime.DATA), evaluator.mesh, self.activation
      )
    return lambda batch: self._predict(evaluator.state, batch)

  def predict_volume(self, evaluator, image: np.ndarray) -> np.ndarray:
    """Raw image [D, H, W, C] -> predicted label map (classes [D,H,W] or regions [D,H,W,R])."""
    probs = segmenter.probabilities(
      self._predict_fn(evaluator),
      image,
      standardize=self.config.data.standardize,
      patch=self.patch,
      overlap=self.config.eval.overlap,
      batch_size=evaluator.geometry.global_batch,
    )
    return segmenter.to_labels(probs, self.activation)

  def evaluate_split(self, evaluator, split: str, overlay_dir: str | None = None):
    indices = self.splits[splits.split_key(split)]
    if len(indices) == 0:
      raise ValueError(
        f"the {split} split is empty; set "
        f"config.data.split.{'val' if split.startswith('val') else split}"
      )
    per_case, overlays = {}, []
    for n, i in enumerate(indices):
      record = self.source[int(i)]
      pred = self.predict_volume(evaluator, record["image"])
      per_case[record["case_id"]] = seg_metrics.case_metrics(
        pred,
        record["label"],
        self.class_names,
        self.regions,
        record["spacing"],
        with_hd95=overlay_dir is not None,
      )
      if overlay_dir and n < self.config.eval.examples:
        path = os.path.join(overlay_dir, f"{record['case_id']}.png")
        seg_metrics.overlay_png(
          path,
          record["image"],
          record["label"],
          pred,
          self.class_names,
          self.regions,
          title=record["case_id"],
        )
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

  def report(
    self,
    evaluator,
    workdir: str,
    history: list[dict],
    out_dir: str | None = None,
    overwrite: bool = False,
  ) -> tasks.Report:
    """The report of config.eval.split (validation when it is empty); its Report carries {split:
    summary} of the reported split and of validation (the bundle states both). A file in out_dir
    that mdx did not write is refused before anything is evaluated, unless overwrite
    (mdx.evaluate.report.layout)."""
    import tempfile

    from mdx.evaluate import report, run_report

    split = self.config.eval.split
    if len(self.splits[splits.split_key(split)]) == 0:
      logging.info("The %s split is empty; reporting on the validation split", split)
      split = "validation"
    out_dir = out_dir or os.path.join(workdir, "report")
    report.layout("segmentation").claim(out_dir, "report", overwrite=overwrite)
    # overlays are drawn while each case's prediction is at hand; the report copies them in
    with tempfile.TemporaryDirectory(prefix="mdx-overlays-") as drawn:
      per_case, overlays = self.evaluate_split(evaluator, split, drawn)
      summaries = {
        split: run_report.segmentation_run_report(
          out_dir,
          split=split,
          per_case=per_case,
          history=history,
          overlays=overlays,
          overwrite=overwrite,
        )
      }
    if split != "validation" and len(self.splits["validation"]):  # the bundle states both
      summaries["validation"] = seg_metrics.summarize(
        self.evaluate_split(evaluator, "validation")[0]
      )
    return tasks.Report(out_dir, summaries)

  # --- the bundle (mdx.inference.bundle) ---

  def bundle_contents(self, evaluator, report: tasks.Report) -> tuple[dict, dict, dict]:
    """(spec, inference variables, bootstrap samples) for mdx.inference.bundle.write, with the
    validation and test results of the state `report` evaluated."""
    results = {}
    for split, summary in report.measured.items():
      results[split] = {
        "n_cases": summary["num_cases"],
        "mean_dice": summary["mean_dice"],
        "per_class": {
          name: {k: s[k] for k in ("dice", "sensitivity", "specificity")}
          for name, s in summary["per_class"].items()
        },
      }
    ids = self.source.case_ids()
    spec = self.bundle_kind.spec(
      bundle_lib.model_spec(self.config.model),
      channels=self.num_channels,
      standardize=self.config.data.standardize,
      patch_size=self.patch,
      overlap=self.config.eval.overlap,
      batch_size=self.config.eval.batch_size,
      class_names=self.class_names,
      label_mode=self.source.label_mode,
      label_values=self.source.label_values,  # the source's (BraTS' enhancing tumour is 4)
      results=results,
      provenance={
        "data": {
          "source": self.config.data.source,
          "fingerprint": bundle_lib.fingerprint(ids[self.splits["train"]]),
          "n_records": len(self.source),
          "n_patients": len(np.unique(self.source.patient_ids())),
          "splits": {k: len(v) for k, v in self.splits.items()},
          "split_by": "case",
        }
      },
    )
    state = evaluator.state
    return spec, {"params": state.params, "batch_stats": state.batch_stats}, {}
