"""Image classification (multi-label or binary) as a task for the generic training loop."""

from __future__ import annotations

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mdx import losses
from mdx.data import augment, pipeline, sources, splits
from mdx.evaluate import metrics
from mdx.models import registry
from mdx.train import optim

SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class ClassificationTask:

  def __init__(self, config):
    self.config = config
    data = config.data
    self.source = sources.make_source(data, config.seed)
    self.findings = tuple(self.source.findings)
    if config.model.num_classes != len(self.findings):
      raise ValueError(f"config.model.num_classes={config.model.num_classes} but source "
                       f"'{data.source}' has {len(self.findings)} findings {list(self.findings)}")
    self.labels = self.source.labels()
    self.patient_ids = self.source.patient_ids()
    self.splits = splits.make_split(data, self.source, config.seed)  # always by patient
    if SPLIT_NAMES.get(config.eval.split) not in self.splits:
      raise ValueError(f"config.eval.split={config.eval.split!r} but split.by="
                       f"{data.split.by!r} makes only {sorted(self.splits)}; set "
                       "--config.eval.split=validation (k-fold has no test set)")
    train_labels = self.labels[self.splits["train"]]
    self.pos_weight, self.neg_weight = losses.positive_negative_weights(train_labels)
    logging.info("Splits by patient: %s", {k: len(v) for k, v in self.splits.items()})
    logging.info("Training prevalence per finding: %s", ", ".join(
        f"{f} {p:.3f}" for f, p in zip(self.findings, np.nanmean(train_labels, 0))))
    if data.resample:
      from mdx.data import resample
      epoch0 = pipeline.ResampledEpochs(self.splits["train"], self.labels, data.resample.to_dict(),
                                        config.seed, self.findings)(0)
      logging.info("Resampling %s: %d training records -> %d visits per epoch",
                   data.resample.to_dict(), len(self.splits["train"]), len(epoch0))
      logging.info("Positive share before resampling: %s",
                   resample.class_balance(self.labels, self.splits["train"], self.findings, log=False))
      logging.info("Positive share the model sees: %s",
                   resample.class_balance(self.labels, epoch0, self.findings, log=False))
    self.transforms_eval = self._standardize()
    self.transforms_train = augment.make(data.augment, data.image_size) + self.transforms_eval
    first = np.asarray(self.source[int(self.splits["train"][0])]["image"])
    self._channels = first.shape[-1] if first.ndim == 3 else 1

  def _standardize(self) -> list:
    mode = self.config.data.standardize
    if mode == "dataset":
      sample = self.splits["train"][:256]
      images = [pipeline.to_float_image(self.source[int(i)]["image"], self.config.data.image_size)
                for i in sample]
      mean, std = augment.dataset_mean_std(images)
      logging.info("Dataset standardisation from %d training images: mean %s std %s",
                   len(sample), mean, std)
      return augment.standardize("dataset", mean, std)
    return augment.standardize(mode)

  # --- the task interface (see mdx/train/tasks.py) ---

  def model(self, bn_axis_name):
    # model.freeze reaches the model too: frozen stages run BatchNorm on running statistics.
    return registry.create_from_config(self.config.model, bn_axis_name=bn_axis_name)

  def sample_input(self) -> np.ndarray:
    size = self.config.data.image_size
    return np.zeros((1, size, size, self._channels), np.float32)

  def init_variables(self, params, batch_stats):
    if self.config.model.init_from:
      from mdx.train import finetune
      params, batch_stats = finetune.restore_backbone(params, batch_stats,
                                                      self.config.model.init_from)
      logging.info("Backbone restored from %s", self.config.model.init_from)
    return params, batch_stats

  def optimizer(self, params):
    tx = optim.make_optimizer(self.config.train)
    if self.config.model.freeze not in ("", "none", None):
      from mdx.train import finetune
      tx = finetune.freeze(tx, finetune.trainable_labels(params, self.config.model.freeze))
    return tx

  def loss(self, logits, batch):
    if self.config.loss.name == "weighted_bce":
      pos, neg = self.pos_weight, self.neg_weight
    elif self.config.loss.name == "bce":
      pos = neg = np.ones_like(self.pos_weight)
    else:
      raise ValueError(f"config.loss.name={self.config.loss.name!r} is unknown; choose "
                       "weighted_bce or bce")
    return losses.weighted_bce(logits, batch["labels"], jnp.asarray(pos), jnp.asarray(neg),
                               batch["label_mask"])

  def train_data(self, process_index: int, process_count: int):
    data, train = self.config.data, self.config.train
    return pipeline.train_dataset(
        self.source, self.splits["train"], batch_size=train.batch_size, steps=train.steps,
        image_size=data.image_size, transforms=self.transforms_train, seed=self.config.seed,
        resample_policy=data.resample.to_dict() if data.resample else None,
        process_index=process_index, process_count=process_count, workers=data.workers,
        prefetch=data.prefetch)

  def eval_data(self, split: str):
    return pipeline.eval_dataset(
        self.source, self.splits[SPLIT_NAMES[split]], batch_size=self.config.eval.batch_size,
        image_size=self.config.data.image_size, transforms=self.transforms_eval,
        process_index=jax.process_index(), process_count=jax.process_count())

  def predict(self, evaluator, split: str) -> dict:
    """-> {'probs', 'labels' (nan unknown), 'index', 'loss'} for every record of the split, in order."""
    logits, loss, fields = evaluator.run(self.eval_data(split))
    index = np.concatenate([f["index"] for f in fields])
    return {"probs": np.asarray(jax.nn.sigmoid(logits)), "labels": self.labels[index],
            "index": index, "loss": loss}

  def validate(self, evaluator) -> dict[str, float]:
    pred = self.predict(evaluator, "validation")
    auroc = metrics.roc_auc_per_class(pred["labels"], pred["probs"])
    return {"val_loss": pred["loss"],
            "val_auroc": float(np.nanmean(auroc)) if np.any(np.isfinite(auroc)) else 0.0}

  def finalize(self, evaluator, workdir: str, history: list[dict]) -> str:
    from mdx.train import report_figures
    from mdx.evaluate import report
    split = self.config.eval.split
    pred = self.predict(evaluator, split)
    val = self.predict(evaluator, "validation")
    out_dir = os.path.join(workdir, "report")
    fig_dir = os.path.join(workdir, "figures")  # the report copies what it shows into out_dir
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(fig_dir, exist_ok=True)
    self.write_predictions(os.path.join(out_dir, f"{split}_predictions.csv"), pred)
    figures = [report_figures.loss_curves(history, os.path.join(fig_dir, "loss_curves.png")),
               report_figures.examples(self.source, pred, self.findings,
                                       os.path.join(fig_dir, "examples.png"),
                                       count=self.config.eval.examples, seed=self.config.seed)]
    gradcam_figures = self.grad_cam(evaluator, pred, fig_dir)
    os.replace(os.path.join(fig_dir, "gradcam.json"), os.path.join(out_dir, "gradcam.json"))
    report.evaluate_and_report(
        out_dir, labels=pred["labels"], probs=pred["probs"], findings=self.findings,
        patient_ids=self.patient_ids[pred["index"]],
        ids=self.source.image_ids()[pred["index"]],
        val_labels=val["labels"], val_probs=val["probs"],
        threshold_policy=self.config.eval.threshold, bootstrap=self.config.eval.bootstrap,
        seed=self.config.seed, extra_figures=figures, gradcam_figures=gradcam_figures,
        title=f"{self.config.model.name} on {self.config.data.source}: {split} split")
    return out_dir

  def model_inputs(self, indices) -> np.ndarray:
    """The images of records as the model sees them in evaluation (resized, standardised)."""
    load = pipeline.LoadRecord(self.source, self.config.data.image_size)
    images = []
    for i in indices:
      record = load(i)
      for t in self.transforms_eval:
        record = t.map(record)
      images.append(record["image"])
    return np.stack(images)

  def grad_cam(self, evaluator, pred: dict, out_dir: str) -> list[tuple[str, str]]:
    """Grad-CAM overlays for positive test images of chosen findings; where the source knows where
    each lesion was drawn (phantoms), the share of heat-map peaks inside the lesion -> gradcam.json."""
    from mdx.evaluate import gradcam
    cfg = self.config.eval.gradcam
    model = self.model(bn_axis_name=None)
    variables = {"params": evaluator.state.params, "batch_stats": evaluator.state.batch_stats}
    figures, summary = [], {}
    for finding in cfg.findings:
      if finding not in self.findings:
        continue
      k = self.findings.index(finding)
      rows = np.flatnonzero(pred["labels"][:, k] == 1)[:cfg.images]
      if len(rows) == 0:
        continue
      records = pred["index"][rows]
      images = self.model_inputs(records)
      heat = gradcam.grad_cam(model, variables, images, k, cfg.layer or None)
      entry = {"images": int(len(rows)), "layer": cfg.layer or getattr(model, "gradcam_layer", None)}
      masks = None
      if hasattr(self.source, "lesion_masks"):
        masks = np.stack([self._mask(int(i), finding, heat.shape[1:]) for i in records])
        nonempty = masks.reshape(len(masks), -1).any(1)
        if nonempty.any():
          entry["peak_in_lesion"] = gradcam.peak_in_mask_rate(heat[nonempty], masks[nonempty])
          # the "pointing game" tolerance: a coarse feature map cannot point finer than its cell
          entry["peak_within_4px_of_lesion"] = gradcam.peak_in_mask_rate(
              heat[nonempty], masks[nonempty], tolerance=4)
      summary[finding] = entry
      for j in range(min(cfg.overlays, len(rows))):
        path = os.path.join(out_dir, f"gradcam_{finding}_{j}.png")
        gradcam.overlay_png(images[j], heat[j], path,
                            title=f"{finding}: p={pred['probs'][rows[j], k]:.2f}",
                            mask=None if masks is None else masks[j])
        rate = entry.get("peak_in_lesion")
        caption = (f"Grad-CAM for {finding} ({entry['layer']}); peak inside the drawn lesion in "
                   f"{rate:.0%} of {len(rows)} positive test images" if rate is not None else
                   f"Grad-CAM for {finding} ({entry['layer']})")
        figures.append((caption, path))
    with open(os.path.join(out_dir, "gradcam.json"), "w") as f:
      json.dump(summary, f, indent=2)
    logging.info("Grad-CAM: %s", summary)
    return figures

  def _mask(self, index: int, finding: str, shape) -> np.ndarray:
    mask = self.source.lesion_masks(index).get(finding)
    if mask is None:
      return np.zeros(shape, bool)
    if mask.shape != tuple(shape):  # nearest-neighbour resize to the heat map's resolution
      rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
      cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
      mask = mask[rows][:, cols]
    return mask

  def write_predictions(self, path: str, pred: dict) -> None:
    image_ids = self.source.image_ids()[pred["index"]]
    patients = self.patient_ids[pred["index"]]
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image_id", "patient_id", *self.findings])
      for row, (iid, pid) in enumerate(zip(image_ids, patients)):
        w.writerow([iid, pid, *(f"{p:.6f}" for p in pred["probs"][row])])
