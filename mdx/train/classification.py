"""Image classification (multi-label or binary) as a task for the generic training loop."""

from __future__ import annotations

import csv
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
    os.makedirs(out_dir, exist_ok=True)
    self.write_predictions(os.path.join(out_dir, f"{split}_predictions.csv"), pred)
    figures = [report_figures.loss_curves(history, os.path.join(out_dir, "loss_curves.png")),
               report_figures.examples(self.source, pred, self.findings,
                                       os.path.join(out_dir, "examples.png"),
                                       count=self.config.eval.examples, seed=self.config.seed)]
    report.evaluate_and_report(
        out_dir, labels=pred["labels"], probs=pred["probs"], findings=self.findings,
        patient_ids=self.patient_ids[pred["index"]],
        ids=self.source.image_ids()[pred["index"]],
        val_labels=val["labels"], val_probs=val["probs"],
        threshold_policy=self.config.eval.threshold, bootstrap=self.config.eval.bootstrap,
        seed=self.config.seed, extra_figures=figures,
        title=f"{self.config.model.name} on {self.config.data.source}: {split} split")
    return out_dir

  def write_predictions(self, path: str, pred: dict) -> None:
    image_ids = self.source.image_ids()[pred["index"]]
    patients = self.patient_ids[pred["index"]]
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image_id", "patient_id", *self.findings])
      for row, (iid, pid) in enumerate(zip(image_ids, patients)):
        w.writerow([iid, pid, *(f"{p:.6f}" for p in pred["probs"][row])])
