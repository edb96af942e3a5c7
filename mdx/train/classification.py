"""Image classification (multi-label or binary) as a task for the generic training loop."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mdx import config as config_lib
from mdx import jsonio, losses, outputs
from mdx.data import augment, pipeline, prepare, resample, sources, splits
from mdx.data import card as card_lib
from mdx.data import standardize as standardize_lib
from mdx.data.image import records
from mdx.evaluate import calibration, metrics, thresholds
from mdx.inference import bundle as bundle_lib
from mdx.inference import classifier
from mdx.models import registry
from mdx.train import optim, tasks

# Across datasets: each dataset's validation and test AUROC beside the pooled (in the workdir).
PER_DATASET_FILE = "per_dataset_metrics.json"
# The training curves' name for each loss.
LOSS_LABELS = {"weighted_bce": "weighted BCE loss", "bce": "BCE loss", "focal": "focal loss"}


class ClassificationTask:
  """Multi-label (or binary) classification of 2D images: chest X-ray findings, pneumonia,
  skin..."""

  # its config (defaults and checks) is mdx.config.TASKS["classification"]
  source_kind = sources.IMAGE
  bundle_kind = classifier.KIND

  @classmethod
  def headline(cls, report_dir: str) -> dict:
    with open(os.path.join(report_dir, "metrics.json")) as f:
      auroc = json.load(f)["macro"]["auroc"]
    return {"test mean AUROC": (auroc["value"], auroc["ci"])}

  def __init__(self, config, workdir: str | None = None):
    """workdir receives the lists of skipped or constant images (mdx.data.check) and the split
    audit (split_audit.json). An unset config.model.num_classes becomes the source's number of
    findings, in place."""
    self.config = config
    data = config.data
    # source, every image checked (a bad file fails now, not mid-training), split by patient,
    # audited: the one path every run's data takes (mdx.data.prepare)
    prepared = prepare.prepare_dataset(data, config.seed, sources.IMAGE, workdir)
    self.source, self.record_check = prepared.source, prepared.check
    self.splits, self.split_audit = prepared.splits, prepared.audit
    # what the data is (images, patients, views, findings, sex, age, what was left out): the
    # run report and the model card show it (mdx.data.card)
    self.data_card = card_lib.describe(
      self.source,
      name=data.source,
      excluded=card_lib.check_exclusions(prepared.check),
      splits=self.splits,
    )
    self.findings = tuple(self.source.findings)
    config_lib.resolve_num_classes(config, self.findings)
    self.labels = self.source.labels()
    self.patient_ids = self.source.patient_ids()
    if splits.split_key(config.eval.split) not in self.splits:
      raise ValueError(
        f"config.eval.split={config.eval.split!r} but split.by="
        f"{data.split.by!r} makes only {sorted(self.splits)}; set "
        "--config.eval.split=validation (k-fold has no test set)"
      )
    train_labels = self.labels[self.splits["train"]]
    self.pos_weight, self.neg_weight = losses.positive_negative_weights(train_labels)
    logging.info("Splits (%s): %s", data.split.by, {k: len(v) for k, v in self.splits.items()})
    logging.info(
      "Training prevalence per finding: %s",
      ", ".join(f"{f} {p:.3f}" for f, p in zip(self.findings, np.nanmean(train_labels, 0))),
    )
    policy = data.resample.to_dict() if data.resample else None
    # Training across datasets (source 'mixture'): each record's dataset, and the datasets drawn
    # in proportion to their weights when they have them (mdx.data.mixture).
    self.datasets = self.source.datasets() if hasattr(self.source, "datasets") else None
    weights = [e.get("weight") for e in getattr(self.source, "entries", ())]
    if self.datasets is not None and weights and weights[0] is not None:
      train = self.splits["train"]
      groups = [train[self.datasets[train] == name] for name in self.source.names]
      self.epochs = pipeline.mixed_epochs(
        groups, weights, config.seed, policy, self.labels, self.findings
      )
      logging.info(
        "Datasets drawn per epoch (weights %s): %s",
        weights,
        dict(zip(self.source.names, self.epochs.counts)),
      )
    else:
      self.epochs = pipeline.epochs(
        self.splits["train"], config.seed, policy, self.labels, self.findings
      )
    if policy:
      epoch0 = self.epochs(0)
      logging.info(
        "Resampling %s: %d training records -> %d visits per epoch",
        policy,
        len(self.splits["train"]),
        len(epoch0),
      )
      logging.info(
        "Positive share before resampling: %s",
        resample.class_balance(self.labels, self.splits["train"], self.findings, log=False),
      )
      logging.info(
        "Positive share the model sees: %s",
        resample.class_balance(self.labels, epoch0, self.findings, log=False),
      )
    self.load = records.LoadImageRecord(self.source, data.image_size)
    self.standardize = self._standardize()  # grain Maps
    self.transforms_eval = self.standardize + [records.mask_unknown_labels]
    self.transforms_train = augment.make(data.augment) + self.transforms_eval
    self._reported: dict | None = None  # the last report's predictions (the bundle states them)
    first = np.asarray(self.source[int(self.splits["train"][0])]["image"])
    self._channels = first.shape[-1] if first.ndim == 3 else 1

  def _standardize(self) -> list:
    mode = self.config.data.standardize
    if mode == "dataset":
      sample = self.splits["train"][:256]
      images = [
        records.to_float_image(self.source[int(i)]["image"], self.config.data.image_size)
        for i in sample
      ]
      mean, std = standardize_lib.dataset_mean_std(images)
      logging.info(
        "Dataset standardisation from %d training images: mean %s std %s", len(sample), mean, std
      )
      return standardize_lib.transforms("dataset", mean, std)
    return standardize_lib.transforms(mode)

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

      params, batch_stats = finetune.restore_backbone(
        params, batch_stats, self.config.model.init_from
      )
      logging.info("Backbone restored from %s", self.config.model.init_from)
    return params, batch_stats

  def optimizer(self, params):
    tx = optim.make_optimizer(self.config.train)
    if self.config.model.freeze not in ("", "none", None):
      from mdx.train import finetune

      tx = finetune.freeze(tx, finetune.trainable_labels(params, self.config.model.freeze))
    return tx

  def loss(self, logits, batch):
    loss = self.config.loss
    if loss.name == "focal":
      return losses.focal_loss(
        logits, batch["labels"], loss.focal_gamma, loss.focal_alpha, batch["label_mask"]
      )
    if loss.name == "weighted_bce":
      pos, neg = self.pos_weight, self.neg_weight
    else:  # bce (mdx.config allows no other)
      pos = neg = np.ones_like(self.pos_weight)
    return losses.weighted_bce(
      logits, batch["labels"], jnp.asarray(pos), jnp.asarray(neg), batch["label_mask"]
    )

  def record_names(self, indices) -> list[str]:
    """Image ids of source records (for messages)."""
    ids = self.source.image_ids()
    return [str(ids[int(i)]) for i in indices]

  def train_data(self, geometry, start_step: int = 0):
    data = self.config.data
    return pipeline.train_dataset(
      self.load,
      self.epochs,
      batch_size=geometry.global_batch,
      steps=self.config.train.steps,
      transforms=self.transforms_train,
      seed=self.config.seed,
      start_step=start_step,
      process_index=geometry.process_index,
      process_count=geometry.process_count,
      workers=data.workers,
      prefetch=data.prefetch,
    )

  def eval_data(self, split: str, geometry):
    return pipeline.eval_dataset(
      self.load,
      self.splits[splits.split_key(split)],
      batch_size=geometry.global_batch,
      transforms=self.transforms_eval,
      process_index=geometry.process_index,
      process_count=geometry.process_count,
    )

  def predict(self, evaluator, split: str) -> dict:
    """-> {'probs', 'labels' (nan unknown), 'index', 'loss'} for every record of the split, in
    order."""
    logits, loss, fields = evaluator.run(self.eval_data(split, evaluator.geometry))
    index = np.concatenate([f["index"] for f in fields])
    return {
      "probs": np.asarray(jax.nn.sigmoid(logits)),
      "labels": self.labels[index],
      "index": index,
      "loss": loss,
    }

  def validate(self, evaluator) -> dict[str, float]:
    """val_loss and val_auroc (the macro AUROC of the pooled validation split); across datasets
    also val_auroc_<dataset>, each dataset's own macro AUROC."""
    pred = self.predict(evaluator, "validation")
    auroc = metrics.roc_auc_per_class(pred["labels"], pred["probs"])
    out = {
      "val_loss": pred["loss"],
      "val_auroc": float(np.nanmean(auroc)) if np.any(np.isfinite(auroc)) else 0.0,
    }
    for name, entry in self.per_dataset(pred).items():
      out[f"val_auroc_{name}"] = entry["macro_auroc"] if entry["macro_auroc"] is not None else 0.0
    return out

  def per_dataset(self, pred: dict, bootstrap: int = 0) -> dict[str, dict]:
    """{dataset: {'n_images', 'n_patients', 'macro_auroc', 'per_finding': {finding: {'auroc',
    'n_known', 'n_positive'}}}} of predictions over a mixture's datasets (only the findings the
    dataset labels); {} for one source. bootstrap > 0 adds 'macro_auroc_ci' and each finding's
    'auroc_ci' ([lo, hi], None where undefined): patient-level resamples within the dataset
    (mdx.evaluate.classification, as the pooled report's, at config.eval's level and seed)."""
    if self.datasets is None:
      return {}
    out = {}
    of = self.datasets[pred["index"]]
    for name in self.source.names:
      rows = of == name
      if not rows.any():
        continue
      labelled = [j for j, f in enumerate(self.findings) if f not in self.source.unlabelled[name]]
      labels, probs = pred["labels"][rows][:, labelled], pred["probs"][rows][:, labelled]
      patients = self.patient_ids[pred["index"][rows]]
      auroc = metrics.roc_auc_per_class(labels, probs)
      cis = self._auroc_intervals(labels, probs, labelled, patients, bootstrap)
      per_finding = {}
      for i, j in enumerate(labelled):
        known = labels[:, i][~np.isnan(labels[:, i])]
        per_finding[self.findings[j]] = {
          "auroc": float(auroc[i]) if np.isfinite(auroc[i]) else None,
          **({"auroc_ci": cis["per_finding"][i]} if cis else {}),
          "n_known": int(len(known)),
          "n_positive": int((known > 0.5).sum()),
        }
      finite = [e["auroc"] for e in per_finding.values() if e["auroc"] is not None]
      out[name] = {
        "n_images": int(rows.sum()),
        "n_patients": int(len(np.unique(patients))),
        "macro_auroc": float(np.mean(finite)) if finite else None,
        **({"macro_auroc_ci": cis["macro"]} if cis else {}),
        "per_finding": per_finding,
      }
    return out

  def _auroc_intervals(self, labels, probs, columns, patients, bootstrap: int) -> dict | None:
    """{'macro': [lo, hi], 'per_finding': [[lo, hi] per column]} of one dataset's AUROC by the
    pooled report's patient bootstrap (mdx.evaluate.classification.evaluate_classification; no
    thresholds, so nothing is chosen on the evaluated set); None when bootstrap is 0."""
    if bootstrap <= 0:
      return None
    from mdx.evaluate import classification as evaluation

    names = [self.findings[j] for j in columns]
    result = evaluation.evaluate_classification(
      labels,
      probs,
      names,
      patient_ids=patients,
      thresholds=[None] * len(names),
      thresholds_chosen_on="none: only AUROC is reported per dataset",
      bootstrap=bootstrap,
      seed=self.config.seed,
    )
    return {
      "macro": result["macro"]["auroc"]["ci"],
      "per_finding": [result["per_finding"][f]["metrics"]["auroc"]["ci"] for f in names],
    }

  def calibration_maps(self, val: dict) -> dict[str, dict]:
    """{finding: map spec} fitted on validation by config.eval.calibration (raw -> calibrated)."""
    method = self.config.eval.calibration
    return {
      f: calibration.fit_map(val["labels"][:, j], val["probs"][:, j], method)
      for j, f in enumerate(self.findings)
    }

  def report(
    self,
    evaluator,
    workdir: str,
    history: list[dict],
    out_dir: str | None = None,
    overwrite: bool = False,
  ) -> tasks.Report:
    """The report of config.eval.split; its Report carries the reported split's predictions and
    result, validation's predictions and the calibration maps fitted on them (the bundle's).
    A file in out_dir that mdx did not write is refused before anything is predicted, unless
    overwrite (mdx.evaluate.report.layout)."""
    from mdx.evaluate import report, run_report

    split = self.config.eval.split
    out_dir = out_dir or os.path.join(workdir, "report")
    report.layout("classification", split=split).claim(out_dir, "report", overwrite=overwrite)
    pred = self.predict(evaluator, split)
    val = self.predict(evaluator, "validation")
    maps = self.calibration_maps(val)
    # across datasets: each dataset's numbers with CIs, in the report and per_dataset_metrics.json
    per_dataset = self.per_dataset(pred, int(self.config.eval.bootstrap)) or None
    result = run_report.classification_run_report(
      out_dir,
      split=split,
      pred=pred,
      val=val,
      findings=self.findings,
      patient_ids=self.patient_ids[pred["index"]],
      image_ids=self.source.image_ids()[pred["index"]],
      image_fn=lambda i: self.source[i]["image"],
      history=history,
      threshold_policy=self.config.eval.threshold,
      bootstrap=self.config.eval.bootstrap,
      examples=self.config.eval.examples,
      seed=self.config.seed,
      title=f"{self.config.model.name} on {self.config.data.source}: {split} split",
      model=self.model(bn_axis_name=None),
      variables={"params": evaluator.state.params, "batch_stats": evaluator.state.batch_stats},
      model_inputs=self.model_inputs,
      gradcam=self.config.eval.gradcam,
      lesion_masks=getattr(self.source, "lesion_masks", None),
      necklace_masks=getattr(self.source, "necklace_mask", None),
      calibration=(self.config.eval.calibration, maps),
      weighted_loss=self.config.loss.name == "weighted_bce",
      loss_label=LOSS_LABELS[self.config.loss.name],
      keep_bootstrap=("auroc",),  # the bundle keeps them for external validation
      data_card=self.data_card,
      per_dataset=per_dataset,
      overwrite=overwrite,
    )
    measured = {"split": split, "pred": pred, "val": val, "maps": maps, "result": result}
    if self.datasets is not None:  # across datasets: each dataset's numbers beside the pool's
      measured["per_dataset"] = self.report_datasets(workdir, split, pred, val, result, per_dataset)
    return tasks.Report(out_dir, measured)

  def report_datasets(
    self, workdir: str, split: str, pred: dict, val: dict, result: dict, reported: dict
  ) -> dict:
    """The reported split's and validation's AUROC per dataset and pooled, logged and written to
    WORKDIR/PER_DATASET_FILE (the report folder holds the pooled report's files only). The
    reported split's numbers carry patient-bootstrap 95% CIs (config.eval.bootstrap resamples
    within each dataset; the pooled ones are the report's own, metrics.json's macro AUROC);
    validation's are point values, as the training curves'. reported: per_dataset(pred,
    bootstrap) the report already computed."""
    key = splits.split_key(split)
    resamples = int(self.config.eval.bootstrap)
    per = {
      "settings": {
        "bootstrap_resamples": {key: resamples, "validation": 0},
        "resampling_unit": "patient, within each dataset",
        "ci_level": result["settings"]["ci_level"],
        "seed": int(self.config.seed),
      },
      "splits": {
        key: {"pooled": {"n_images": len(pred["index"])}, **reported},
        "validation": {"pooled": {"n_images": len(val["index"])}, **self.per_dataset(val)},
      },
    }
    pooled = per["splits"][key]["pooled"]
    pooled["macro_auroc"] = result["macro"]["auroc"]["value"]
    pooled["macro_auroc_ci"] = result["macro"]["auroc"]["ci"]
    auroc = metrics.roc_auc_per_class(val["labels"], val["probs"])
    per["splits"]["validation"]["pooled"]["macro_auroc"] = (
      float(np.nanmean(auroc)) if np.any(np.isfinite(auroc)) else None
    )
    for name, entries in per["splits"].items():
      logging.info(
        "%s macro AUROC per dataset: %s",
        name,
        ", ".join(f"{d} {_auroc_text(e)}" for d, e in entries.items()),
      )
    if workdir and jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, PER_DATASET_FILE), jsonio.jsonable(per))
    return per

  # --- the bundle (mdx.inference.bundle) ---

  def _split_results(self, result: dict, labels: np.ndarray, calibrated: bool) -> dict:
    """An evaluate_classification result as the bundle states a split's measured numbers;
    calibrated: the result also measured the validation-fitted calibration on this split."""
    method = self.config.eval.calibration
    per_finding = {}
    for j, f in enumerate(self.findings):
      pf = result["per_finding"][f]
      m = pf["metrics"]
      known = labels[:, j][~np.isnan(labels[:, j])]
      entry = {
        "n": pf["n"],
        "n_positive": pf["n_positive"],
        "prevalence": float(np.mean(known, dtype=np.float64)) if len(known) else None,
      }
      for name in ("auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv"):
        entry[name] = m.get(name)
      entry["brier"], entry["ece"] = m.get("brier"), m.get("ece")
      if calibrated:
        entry["brier_calibrated"] = m.get(f"brier_{method}")
        entry["ece_calibrated"] = m.get(f"ece_{method}")
      per_finding[f] = entry
    return {
      "n_images": result["n_images"],
      "n_patients": result["n_patients"],
      "macro_auroc": result["macro"]["auroc"],
      "per_finding": per_finding,
    }

  def bundle_contents(self, evaluator, report: tasks.Report) -> tuple[dict, dict, dict]:
    """(spec, inference variables, bootstrap samples) for mdx.inference.bundle.write: thresholds
    and calibration chosen on validation, the validation and test results of the reported state
    (the reported split's numbers are the report's own, not computed again)."""
    from mdx.evaluate import classification as evaluation

    rep = report.measured
    split, val, result = rep["split"], rep["val"], rep["result"]
    ev = self.config.eval
    if splits.split_key(split) == "validation":
      val_result = result
    else:  # validation's own numbers, thresholds chosen on it (the report gives the test split's)
      val_result = evaluation.evaluate_classification(
        val["labels"],
        val["probs"],
        self.findings,
        patient_ids=self.patient_ids[val["index"]],
        threshold_policy=ev.threshold,
        bootstrap=ev.bootstrap,
        seed=self.config.seed,
      )
    results = {"validation": self._split_results(val_result, val["labels"], calibrated=False)}
    samples = {}
    if splits.split_key(split) != "validation":
      results[split] = self._split_results(result, rep["pred"]["labels"], calibrated=True)
      samples = {f"{split}/{k}": v for k, v in result["bootstrap_samples"].items()}
    results["settings"] = {
      k: result["settings"][k]
      for k in ("bootstrap_resamples", "resampling_unit", "ci_level", "seed")
    }
    thresholds_spec = {
      "policy": str(ev.threshold),
      "description": thresholds.describe_policy(ev.threshold),
      "chosen_on": f"validation split ({len(val['index'])} images)",
      "scale": "raw",
      "values": {f: result["per_finding"][f]["threshold"] for f in self.findings},
    }
    calibration_spec = {
      "method": ev.calibration,
      "fitted_on": f"validation split ({len(val['index'])} images)",
      "maps": rep["maps"],
    }
    train = self.splits["train"]
    standardize = {"mode": self.config.data.standardize}
    if self.standardize and self.standardize[0].mode == "dataset":
      standardize.update(mean=list(self.standardize[0].mean), std=list(self.standardize[0].std))
    spec = self.bundle_kind.spec(
      bundle_lib.model_spec(self.config.model),
      image_size=self.config.data.image_size,
      channels=self._channels,
      standardize=standardize,
      findings=self.findings,
      thresholds=thresholds_spec,
      calibration=calibration_spec,
      results=results,
      provenance={
        "data": {
          "source": self.config.data.source,
          "fingerprint": bundle_lib.fingerprint(
            self.source.image_ids()[train], self.patient_ids[train], self.labels[train]
          ),
          "n_records": len(self.labels),
          "n_patients": len(np.unique(self.patient_ids)),
          "splits": {k: len(v) for k, v in self.splits.items()},
          "split_by": self.config.data.split.by,
          "train_prevalence": {
            f: float(p) for f, p in zip(self.findings, np.nanmean(self.labels[train], 0))
          },
          **self._training_sources(train),
          "card": self.data_card,
        }
      },
    )
    state = evaluator.state
    return spec, {"params": state.params, "batch_stats": state.batch_stats}, samples

  def _training_sources(self, train: np.ndarray) -> dict:
    """Across datasets: {'sources': one entry per dataset with its config, weight, modality,
    record counts and the fingerprint of its own training records (its ids and labels as the
    dataset gives them)}; {} for one source."""
    if self.datasets is None:
      return {}
    out = []
    for k, (name, part, entry) in enumerate(
      zip(self.source.names, self.source.parts, self.source.entries)
    ):
      mine = train[self.datasets[train] == name] - self.source.offsets[k]
      own = {key: value for key, value in entry.items() if key not in ("name", "weight")}
      out.append(
        {
          "name": name,
          "source": entry["source"],
          "weight": entry.get("weight"),
          "modality": sources.spec(entry["source"]).modality,
          "config": jsonio.jsonable(own),
          "fingerprint": bundle_lib.fingerprint(
            part.image_ids()[mine], part.patient_ids()[mine], part.labels()[mine]
          ),
          "n_records": len(part),
          "n_train": len(mine),
          "findings_unlabelled": list(self.source.unlabelled[name]),
        }
      )
    return {"sources": out}

  def model_inputs(self, indices) -> np.ndarray:
    """The images of records as the model sees them in evaluation (resized, standardised)."""
    images = []
    for i in indices:
      record = self.load(i)
      for t in self.standardize:
        record = t.map(record)
      images.append(record["image"])
    return np.stack(images)


def _auroc_text(entry: dict) -> str:
  """'0.812 (0.760-0.861)', '0.812' without an interval, or 'n/a' (undefined)."""
  value, ci = entry.get("macro_auroc"), entry.get("macro_auroc_ci") or [None, None]
  if value is None:
    return "n/a"
  return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if None not in ci else "")
