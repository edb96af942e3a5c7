"""3D segmentation (MSD, BraTS, brain phantoms) as a task for the generic training loop.

The run plans itself from its training cases as nnU-Net does (plan_run: a fingerprint of the cases,
mdx.data.volume.fingerprint, and a plan, mdx.data.volume.plan): target spacing, patch, batch,
network and normalisation for every field the config leaves None, written into the config (so
config.json states what the model was built with) and WORKDIR/plan.json. Training sees random
sub-volumes of the cases resampled to the target spacing and standardised, sampled to limit
background, augmented as nnU-Net augments (data.augment='nnunet'); the U-Net's deep-supervision
outputs each get a share of the loss. Validation and test run each whole scan, at its own spacing,
through the one path a bundle predicts with (mdx.inference.segmenter.probabilities: resampled to
the target spacing, Gaussian-weighted sliding windows, test-time mirroring in the final report,
probabilities resampled back to the scan's grid) and post-processing decided on validation.
Labels are classes (softmax) or, for BraTS-style data with data.label_mode='regions', the nested
tumour regions (sigmoid).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from mdx import config as config_lib
from mdx import losses, runtime
from mdx.data import pipeline, prepare, sources, splits
from mdx.data import standardize as standardize_lib
from mdx.data.volume import plan as plan_lib
from mdx.data.volume import resample as resample_lib
from mdx.data.volume import transforms as vt
from mdx.evaluate import postprocess as postprocess_lib
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
    self.splits = prepared.splits  # by patient (one per case)
    for name in ("test", "validation"):
      self.splits.setdefault(name, np.zeros(0, np.int64))
    logging.info("Splits by case: %s", {k: len(v) for k, v in self.splits.items()})
    self.plan = plan_run(config, self.source, self.splits["train"], workdir)
    self.patch = tuple(int(s) for s in data.patch_size)
    self.target_spacing = None if data.spacing == "native" else tuple(data.spacing)
    self.standardize = standardize_lib.check(data.standardize)  # plain (picklable for workers)
    self.mirror_axes = tuple(data.flip_axes)
    self.num_channels = self.source.num_channels or self.source[0]["image"].shape[-1]
    self.postprocess = None  # decided on validation by report()
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
    """logits: [B, D, H, W, K], or the deep-supervision tuple (full resolution first) in
    training, each output with its nnU-Net weight (mdx.losses.deep_supervision_loss)."""
    c = self.config.loss
    return losses.deep_supervision_loss(
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
    if config_lib.segmentation_augment(d) == "nnunet":
      # nnU-Net's rule: a patch more than 3x longer in-plane than deep trains as stacked 2D
      coarse = 0 if max(self.patch[1:]) > 3 * self.patch[0] else None
      out += vt.nnunet_augmentations(self.mirror_axes, anisotropic_axis=coarse)
    else:
      if self.mirror_axes:
        out.append(vt.RandomFlip3D(self.mirror_axes))
      if d.rotate_degrees:
        out.append(vt.RandomRotate3D(d.rotate_degrees, p=d.rotate_p))
      if d.intensity_scale or d.intensity_shift:
        out.append(vt.RandomIntensity(d.intensity_scale, d.intensity_shift))
    return out + [vt.KeepKeys(("image", "label", "index"))]

  def training_source(self):
    """The source training reads: the cases at the plan's spacing (kept in memory once
    resampled when data.cache asks), or as they are."""
    if self.target_spacing is None:
      return self.source
    return resample_lib.ResampledSource(
      self.source, self.target_spacing, cache=bool(self.config.data.get("cache", False))
    )

  def record_names(self, indices) -> list[str]:
    """Case ids of source records (for messages)."""
    ids = self.source.case_ids()
    return [str(ids[int(i)]) for i in indices]

  def train_data(self, geometry, start_step: int = 0):
    data = self.config.data
    return pipeline.train_dataset(
      vt.LoadCase(self.training_source(), self.standardize),
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

  def probabilities(self, evaluator, record: dict, mirror: bool) -> np.ndarray:
    """A case's probabilities on its own grid [D, H, W, K], as its bundle will compute them."""
    return segmenter.probabilities(
      self._predict_fn(evaluator),
      record["image"],
      standardize=self.standardize,
      patch=self.patch,
      overlap=self.config.eval.overlap,
      batch_size=evaluator.geometry.global_batch,
      spacing=record["spacing"],
      target_spacing=self.target_spacing,
      mirror_axes=self.mirror_axes if mirror else (),
    )

  def predict_volume(self, evaluator, record: dict, mirror: bool = False) -> np.ndarray:
    """A case -> its predicted label map (classes [D,H,W] or regions [D,H,W,R]), before
    post-processing."""
    return segmenter.to_labels(self.probabilities(evaluator, record, mirror), self.activation)

  def _cases(self, split: str):
    indices = self.splits[splits.split_key(split)]
    if len(indices) == 0:
      raise ValueError(
        f"the {split} split is empty; set "
        f"config.data.split.{'val' if split.startswith('val') else split}"
      )
    return (self.source[int(i)] for i in indices)

  def _metrics(self, pred, record, surfaces: bool) -> dict:
    return seg_metrics.case_metrics(
      pred,
      record["label"],
      self.class_names,
      self.regions,
      record["spacing"],
      with_hd95=surfaces,
      nsd_tolerance=self.config.eval.nsd_tolerance_mm,
    )

  def evaluate_split(
    self,
    evaluator,
    split: str,
    overlay_dir: str | None = None,
    final: bool = True,
    predicted: dict | None = None,
  ):
    """(per-case metrics, overlay paths) of `split` as its bundle would segment it: mirrored as
    eval.mirror says, post-processed as validation decided (report); HD95 and NSD with overlays.
    final=False (validation while training): one plain pass per case, Dice alone. predicted:
    {case_id: label map before post-processing} already made this way (inference_parts), so the
    report does not predict those cases again."""
    per_case, overlays = {}, []
    mirror = final and bool(self.config.eval.mirror)
    predicted = predicted or {}
    for n, record in enumerate(self._cases(split)):
      pred = predicted.get(record["case_id"])
      if pred is None:
        pred = self.predict_volume(evaluator, record, mirror)
      if final:
        pred = segmenter.postprocess(pred, self.postprocess, self.class_names)
      per_case[record["case_id"]] = self._metrics(pred, record, overlay_dir is not None)
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

  def inference_parts(self, evaluator, split: str) -> tuple[dict, dict]:
    """What test-time mirroring and post-processing each bring on `split`: the mean Dice per
    class of the plain, mirrored and post-processed predictions of the same model (the report's
    "inference" section and the README's ablation), and decides the post-processing on
    validation when eval.postprocess asks (nnU-Net keeps it where it does not lower Dice).
    Returns (that section, {case_id: the label map as the bundle predicts it, before
    post-processing}) for evaluate_split to reuse."""
    e = self.config.eval
    if not (e.mirror or e.postprocess):
      return {}, {}
    ways = {"plain": []}
    if e.mirror and self.mirror_axes:
      ways["mirrored"] = []
    cases = []
    for record in self._cases(split):
      plain = self.predict_volume(evaluator, record, mirror=False)
      ways["plain"].append(plain)
      if "mirrored" in ways:
        ways["mirrored"].append(self.predict_volume(evaluator, record, mirror=True))
      cases.append(record)
    final = ways.get("mirrored", ways["plain"]) if e.mirror else ways["plain"]
    out = {"split": split, "mirror_axes": list(self.mirror_axes)}
    if e.postprocess and split.startswith("val"):
      truths = [r["label"] for r in cases]
      self.postprocess = postprocess_lib.decide(list(zip(final, truths)), self.class_names)
      out["postprocess"] = self.postprocess
    if self.postprocess:
      ways["post-processed"] = [
        segmenter.postprocess(p, self.postprocess, self.class_names) for p in final
      ]
    out["mean_dice"] = {}
    for name, preds in ways.items():
      summary = seg_metrics.summarize(
        {r["case_id"]: self._metrics(p, r, False) for p, r in zip(preds, cases)}
      )
      out["mean_dice"][name] = {
        "mean": summary["mean_dice"],
        **{k: v["dice"] for k, v in summary["per_class"].items() if k != "background"},
      }
    return out, {r["case_id"]: p for r, p in zip(cases, final)}

  def validate(self, evaluator) -> dict[str, float]:
    per_case, _ = self.evaluate_split(evaluator, "validation", final=False)
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
    self.postprocess = None
    parts, validated = {}, {}
    if len(self.splits["validation"]):  # decides the post-processing, shows what each part did
      parts, validated = self.inference_parts(evaluator, "validation")
    # overlays are drawn while each case's prediction is at hand; the report copies them in
    with tempfile.TemporaryDirectory(prefix="mdx-overlays-") as drawn:
      reuse = validated if split == "validation" else None
      per_case, overlays = self.evaluate_split(evaluator, split, drawn, predicted=reuse)
      summaries = {
        split: run_report.segmentation_run_report(
          out_dir,
          split=split,
          per_case=per_case,
          history=history,
          overlays=overlays,
          overwrite=overwrite,
          plan=plan_lib.describe(self.plan) if self.plan else None,
          inference=parts,
        )
      }
    if split != "validation" and len(self.splits["validation"]):  # the bundle states both
      summaries["validation"] = seg_metrics.summarize(
        self.evaluate_split(evaluator, "validation", predicted=validated)[0]
      )
    return tasks.Report(out_dir, summaries)

  # --- the bundle (mdx.inference.bundle) ---

  def bundle_contents(self, evaluator, report: tasks.Report) -> tuple[dict, dict, dict]:
    """(spec, inference variables, bootstrap samples) for mdx.inference.bundle.write, with the
    validation and test results of the state `report` evaluated."""
    results = {split: seg_metrics.bundle_results(s) for split, s in report.measured.items()}
    ids = self.source.case_ids()
    spec = self.bundle_kind.spec(
      # the deep-supervision heads train the decoder; the bundle predicts with the main head only
      {**bundle_lib.model_spec(self.config.model), "deep_supervision": False},
      channels=self.num_channels,
      standardize=self.standardize,
      patch_size=self.patch,
      overlap=self.config.eval.overlap,
      batch_size=self.config.eval.batch_size,
      class_names=self.class_names,
      label_mode=self.source.label_mode,
      label_values=self.source.label_values,  # the source's (BraTS' enhancing tumour is 4)
      spacing=self.target_spacing,
      mirror_axes=self.mirror_axes if self.config.eval.mirror else (),
      postprocess=self.postprocess,
      plan=self.plan,
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
    params = {k: v for k, v in state.params.items() if not k.startswith("head_ds")}
    return spec, {"params": params, "batch_stats": state.batch_stats}, {}


# ------------------------------------------------------------------------------------ the plan
def plan_run(config, source, train_indices, workdir: str | None) -> dict | None:
  """Plans the run from the fingerprint of its training cases and fills every field the config
  leaves None with the plan's, in place: data.spacing, data.patch_size, train.batch_size,
  eval.batch_size, model.base_width/max_width/strides, data.standardize (by data.modality, else
  the source's), and data.flip_axes (the source's mirror axes). Writes WORKDIR/plan.json and logs
  the plan's lines. A resumed run's config.json holds the first plan's values, so it plans the
  same. Returns the plan."""
  import jax

  data, model = config.data, config.model
  _, plan = plan_lib.plan_dataset(
    config, source, train_indices, jax.default_backend(), progress=jax.process_index() == 0
  )
  with config.unlocked():
    if data.spacing is None:
      data.spacing = tuple(plan["target_spacing"])
    if data.patch_size is None:
      data.patch_size = tuple(plan["patch_size"])
    if config.train.batch_size is None:
      config.train.batch_size = int(plan["batch_size"])
    if config.eval.batch_size is None:
      config.eval.batch_size = int(plan["batch_size"])
    if model.get("depth") is None and model.get("strides") is None:
      model.strides = tuple(tuple(level) for level in plan["strides"])
    for key in ("base_width", "max_width"):
      if model.get(key) is None:
        model[key] = int(plan[key])
    if data.standardize is None:
      data.standardize = plan["normalization"]
    if data.flip_axes is None:
      axes = _mirror_axes(source, data.source)
      data.flip_axes = tuple(axes)
  for line in plan_lib.describe(plan):
    logging.info("plan: %s", line)
  if workdir and jax.process_index() == 0:
    plan_lib.write(plan, os.path.join(workdir, "plan.json"))
  return plan


def _mirror_axes(source, name: str) -> tuple[int, ...]:
  """The axes the source says a mirror may flip: a built source's mirror_axes() (an MSD task's
  left-right axes), else its registry entry's flip_axes; a source that cannot say is an error
  asking for config.data.flip_axes."""
  axes = source.mirror_axes() if hasattr(source, "mirror_axes") else sources.spec(name).flip_axes
  if axes is None:
    raise ValueError(
      f"source {name!r} cannot say along which axes a mirror keeps its labels true (an unknown "
      "MSD task: its classes may be defined by direction); set config.data.flip_axes, e.g. (0,) "
      "for left-right or () for none"
    )
  return tuple(axes)
