"""A run's report from plain arrays: training curves, examples, the Grad-CAM driver, run reports."""

import csv
import json
import os
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from mdx.evaluate import gradcam as G
from mdx.evaluate import plots, run_report
from mdx.evaluate import segmentation as seg

PNG = b"\x89PNG\r\n\x1a\n"
EVALUATE = pathlib.Path(__file__).resolve().parents[2] / "mdx" / "evaluate"


class TinyCNN(nn.Module):
  """conv -> conv 'features' -> global average pool -> dense (as in test_gradcam)."""

  gradcam_layer = "features"

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
    h = nn.relu(nn.Conv(6, (3, 3), name="features")(h))
    return nn.Dense(2, name="head")(h.mean((1, 2)))


def _history(with_val: bool, metric: str):
  rows = [{"step": s, "train_loss": 1.0 / s, "images_per_second": 10.0} for s in range(1, 9)]
  if with_val:
    rows += [{"step": 4, "val_loss": 0.6, metric: 0.6}, {"step": 8, "val_loss": 0.4, metric: 0.7}]
    if metric == "val_dice":
      rows[-1]["val_dice_tumour"] = 0.5
  return rows


@pytest.mark.parametrize(
  "metric, label, ylim, chance",
  [("val_auroc", "mean AUROC", (0.4, 1.0), 0.5), ("val_dice", "Dice", (0, 1), None)],
)
@pytest.mark.parametrize("with_val", [True, False])
def test_training_curves_png_with_and_without_validation(
  tmp_path, metric, label, ylim, chance, with_val
):
  path = str(tmp_path / "sub" / "curves.png")
  caption, got = plots.training_curves_png(
    _history(with_val, metric), path, metric, label, "loss", ylim=ylim, chance=chance
  )
  assert got == path and open(path, "rb").read(8) == PNG
  assert label in caption and ("validation loss" in caption) == with_val
  # an empty history (--mode=eval before any training row) still draws
  _, empty = plots.training_curves_png([], str(tmp_path / "empty.png"), metric, label, "loss")
  assert open(empty, "rb").read(8) == PNG


@pytest.mark.parametrize(
  "values, low",
  [((0.8468, 0.8841), 0.80), ((0.85, 0.9), 0.80), ((0.02, 0.3), 0.0), ((), 0.0)],
)
def test_a_lower_bound_of_none_is_the_lowest_value_drawn_rounded_down(
  tmp_path, monkeypatch, values, low
):
  """ylim=(None, 1): a Dice curve climbing from 0.85 to 0.88 is drawn on 0.80-1, not 0-1; a
  value on a multiple of 0.05 keeps a step below it; an empty history gets 0."""
  closed = []
  monkeypatch.setattr(plots.plt, "close", closed.append)  # keep the figure to read its axes
  history = [{"step": 1 + n, "val_dice": v, "val_dice_a": v + 0.01} for n, v in enumerate(values)]
  plots.training_curves_png(history, str(tmp_path / "c.png"), "val_dice", "Dice", ylim=(None, 1))
  (figure,) = closed
  assert figure.axes[1].get_ylim() == pytest.approx((low, 1.0))
  figure.clf()


def test_curves_differ_when_validation_is_drawn(tmp_path):
  a = plots.training_curves_png(_history(True, "val_auroc"), str(tmp_path / "a.png"))[1]
  b = plots.training_curves_png(_history(False, "val_auroc"), str(tmp_path / "b.png"))[1]
  assert open(a, "rb").read() != open(b, "rb").read()


def test_examples_png_draws_mostly_positive_images_reproducibly(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.zeros((20, 2))
  labels[:10, 0] = 1
  labels[3, 1] = np.nan
  probs = rng.random((20, 2))
  index = np.arange(100, 120)
  asked = []

  def image_fn(i):
    asked.append(i)
    return rng.random((16, 16, 1))

  caption, path = plots.examples_png(
    image_fn, labels, probs, index, ("Mass", "Nodule"), str(tmp_path / "ex.png"), count=8, seed=3
  )
  assert open(path, "rb").read(8) == PNG and "three highest probabilities" in caption
  assert len(asked) == 8 and len(set(asked)) == 8 and set(asked) <= set(index.tolist())
  assert sum(i < 110 for i in asked) == 6  # count - count // 4 positives
  first = list(asked)
  asked.clear()
  plots.examples_png(
    image_fn, labels, probs, index, ("Mass", "Nodule"), str(tmp_path / "ex2.png"), count=8, seed=3
  )
  assert asked == first


def _bright_square_model(size, n, seed=1):
  """Images with one bright square each, and a model whose class 0 evidence is brightness."""
  rng = np.random.default_rng(seed)
  x = 0.05 * rng.random((n, size, size, 1)).astype(np.float32)
  masks = np.zeros((n, size, size), bool)
  for i in range(n):
    r, c = rng.integers(2, size - 8, 2)
    x[i, r : r + 6, c : c + 6] = 1.0
    masks[i, r : r + 6, c : c + 6] = True
  model = TinyCNN()
  params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(0), x)["params"])
  params["stem"]["kernel"] = np.full((3, 3, 1, 4), 1 / 9, np.float32)
  params["stem"]["bias"] = np.full((4,), -0.5, np.float32)
  params["features"]["kernel"] = np.full((3, 3, 4, 6), 1 / 36, np.float32)
  params["features"]["bias"] = np.zeros((6,), np.float32)
  params["head"]["kernel"] = np.ones((6, 2), np.float32) * np.array([1.0, -1.0], np.float32)
  return model, {"params": params}, x, masks


def test_grad_cam_report_peaks_in_lesions_and_writes_named_files(tmp_path):
  size, n = 24, 6
  model, variables, x, masks = _bright_square_model(size, n)
  index = np.arange(50, 50 + n)  # record indices differ from rows
  labels = np.array([[1, 0]] * 5 + [[0, 0]], np.float64)
  probs = np.full((n, 2), 0.25)
  asked = []

  def model_inputs(records):
    asked.append(list(records))
    return x[np.asarray(records) - 50]

  def lesion_masks(i):  # at twice the heat map's resolution: the driver resizes
    return {"Mass": np.repeat(np.repeat(masks[i - 50], 2, 0), 2, 1)}

  figures = G.grad_cam_report(
    model,
    variables,
    model_inputs,
    labels=labels,
    probs=probs,
    index=index,
    findings=("Mass", "Nodule"),
    out_dir=str(tmp_path / "figs"),
    gradcam_findings=("Mass", "Nodule", "Cardiomegaly"),
    images=4,
    overlays=2,
    layer="",
    lesion_masks=lesion_masks,
    summary_path=str(tmp_path / "report" / "gradcam.json"),
  )
  assert asked == [[50, 51, 52, 53]]  # the first `images` positives; Nodule has none
  summary = json.load(open(tmp_path / "report" / "gradcam.json"))
  assert summary == {
    "Mass": {
      "images": 4,
      "layer": "features",
      "peak_in_lesion": 1.0,
      "peak_within_4px_of_lesion": 1.0,
    }
  }
  assert [os.path.basename(p) for _, p in figures] == ["gradcam_Mass_0.png", "gradcam_Mass_1.png"]
  assert all(open(p, "rb").read(8) == PNG for _, p in figures)
  assert "peak inside the drawn lesion in 100% of 4" in figures[0][0]
  # No lesion masks: no rates, and gradcam.json lands in out_dir by default.
  figures = G.grad_cam_report(
    model,
    variables,
    model_inputs,
    labels=labels,
    probs=probs,
    index=index,
    findings=("Mass", "Nodule"),
    out_dir=str(tmp_path / "plain"),
    gradcam_findings=("Mass",),
    images=2,
    overlays=5,
    layer="stem",
  )
  summary = json.load(open(tmp_path / "plain" / "gradcam.json"))
  assert summary == {"Mass": {"images": 2, "layer": "stem"}} and len(figures) == 2
  assert figures[0][0] == "Grad-CAM for Mass (stem)"


def test_classification_run_report_writes_everything(tmp_path):
  size, n = 24, 12
  model, variables, x, _ = _bright_square_model(size, n)
  rng = np.random.default_rng(0)
  findings = ("Mass", "Nodule")
  labels = (rng.random((n, 2)) < 0.5).astype(np.float64)
  labels[:2] = [[1, 0], [0, 1]]
  labels[2:4] = [[0, 0], [1, 1]]
  probs = rng.random((n, 2)).astype(np.float32)
  pred = {"labels": labels, "probs": probs, "index": np.arange(n)}
  val = {"labels": labels[::-1].copy(), "probs": probs[::-1].copy(), "index": np.arange(n)}
  out = str(tmp_path / "report")
  result = run_report.classification_run_report(
    out,
    split="test",
    pred=pred,
    val=val,
    findings=findings,
    patient_ids=np.array([f"p{i // 2}" for i in range(n)]),
    image_ids=np.array([f"img{i}.png" for i in range(n)]),
    image_fn=lambda i: x[i],
    history=_history(True, "val_auroc"),
    bootstrap=20,
    examples=4,
    seed=0,
    title="tiny",
    model=model,
    variables=variables,
    model_inputs=lambda r: x[np.asarray(r)],
    gradcam={"findings": ("Mass",), "images": 4, "overlays": 1, "layer": ""},
  )
  assert result["title"] == "tiny" and result["findings"] == list(findings)
  for name in ("metrics.json", "report.html", "report.md", "gradcam.json", "test_predictions.csv"):
    assert os.path.exists(os.path.join(out, name)), name
  html = open(os.path.join(out, "report.html")).read()
  for figure in ("loss_curves.png", "examples.png", "gradcam_Mass_0.png"):
    assert figure in html, figure
  # figures drawn in a temporary folder and copied in; nothing else beside the report
  assert sorted(os.listdir(tmp_path)) == ["report"]
  assert {"extra", "gradcam", "figures"} <= set(os.listdir(out))
  assert not [n for n in os.listdir(out) if n.startswith(".mdx-partial")]
  rows = list(csv.reader(open(os.path.join(out, "test_predictions.csv"))))
  assert rows[0] == ["image_id", "patient_id", "Mass", "Nodule"] and len(rows) == n + 1
  assert rows[3][:2] == ["img2.png", "p1"] and rows[3][2] == f"{probs[2, 0]:.6f}"
  assert json.load(open(os.path.join(out, "gradcam.json")))["Mass"]["images"] == 4


def test_segmentation_run_report(tmp_path):
  label = np.zeros((6, 6, 4), np.int32)
  label[1:4, 1:4, 1:3] = 1
  pred = label.copy()
  pred[4, 4, 2] = 1
  names = ("background", "tumour")
  per_case = {
    "c1": seg.case_metrics(pred, label, names),
    "c2": seg.case_metrics(label, label, names),
  }
  out = str(tmp_path / "report")
  overlay = str(tmp_path / "drawn" / "c1.png")  # drawn while evaluating, copied in
  seg.overlay_png(
    overlay, np.random.default_rng(0).random((6, 6, 4, 1)), label, pred, names, title="c1"
  )
  history = _history(True, "val_dice")
  summary = run_report.segmentation_run_report(
    out, split="validation", per_case=per_case, history=history, overlays=[overlay]
  )
  metrics = json.load(open(os.path.join(out, "metrics.json")))
  assert metrics["summary"]["split"] == "validation" and summary["num_cases"] == 2
  assert metrics["summary"]["per_class"]["tumour"]["dice"] == pytest.approx(
    (2 * 18 / (2 * 18 + 1) + 1.0) / 2
  )
  report = open(os.path.join(out, "report.md")).read()
  assert open(os.path.join(out, "curves.png"), "rb").read(8) == PNG
  assert "(curves.png)" in report and "(overlays/c1.png)" in report
  assert open(os.path.join(out, "overlays", "c1.png"), "rb").read() == open(overlay, "rb").read()
  assert sorted(os.listdir(out)) == [
    ".mdx-outputs.json",
    "curves.png",
    "metrics.json",
    "overlays",
    "report.md",
  ]
  out2 = str(tmp_path / "no_history")
  run_report.segmentation_run_report(out2, split="test", per_case=per_case, history=[])
  assert not os.path.exists(os.path.join(out2, "curves.png"))
  assert "curves.png" not in open(os.path.join(out2, "report.md")).read()


def test_dataset_card_blocks_render_the_cards_numbers():
  from mdx.evaluate import report

  card = {
    "source": "padchest",
    "images": 10,
    "patients": 4,
    "studies": 6,
    "views": {"PA": 7, "AP": 3},
    "findings": {"Effusion": {"positive": 3, "negative": 6, "unknown": 1, "prevalence": 1 / 3}},
    "sex": {"F": 6, "M": 4},
    "age": {"n": 10, "unknown": 0, "median": 61.0, "q1": 50.0, "q3": 70.0, "min": 2, "max": 90},
    "excluded": {"exclude": 2},
    "skipped": 2,
    "splits": {
      "train": {"images": 6, "patients": 2, "positive": {"Effusion": 2}},
      "test": {"images": 4, "patients": 2, "positive": {"Effusion": 1}},
    },
  }
  blocks = run_report.dataset_card_blocks(card)
  assert blocks[0] == ("h2", "Training data: dataset card of padchest")
  md = report._render_md(blocks)
  assert "Images 10; patients 4; studies 6." in md and "Sex: F 6, M 4." in md
  assert "median 61 years (quartiles 50-70, range 2-90) over 10 images" in md
  # one paragraph and one table: the counts, then the positives of each split
  assert sum(kind == "p" for kind, *_ in blocks) == 1 and sum(k == "table" for k, *_ in blocks) == 1
  assert (
    "| Finding | Positive | Negative | Unknown | Prevalence | train positive | test positive |"
    in md
  )
  assert "| Effusion | 3 | 6 | 1 | 0.333 | 2 | 1 |" in md
  assert "<td>0.333</td>" in report._render_html(blocks, "t")


def test_per_dataset_blocks_show_each_datasets_auroc_and_what_it_does_not_label():
  from mdx.evaluate import report

  per = {
    "nih": {
      "n_images": 40,
      "n_patients": 12,
      "macro_auroc": 0.75,
      "macro_auroc_ci": [0.6, 0.9],
      "per_finding": {
        "Effusion": {"auroc": 0.7, "auroc_ci": [0.5, 0.85]},
        "Mass": {"auroc": 0.8, "auroc_ci": [0.65, 0.95]},
      },
    },
    "siim": {
      "n_images": 1200,
      "n_patients": 900,
      "macro_auroc": None,
      "per_finding": {"Pneumothorax": {"auroc": None}},
    },
  }
  md = report._render_md(run_report.per_dataset_blocks(per, ["Effusion", "Pneumothorax"], "test"))
  assert "| nih | 40 | 12 | 0.750 [0.600, 0.900] |" in md
  assert "| siim | 1,200 | 900 | undefined |" in md
  assert "| Effusion | 0.700 [0.500, 0.850] | not labelled |" in md
  assert "| Pneumothorax | not labelled | undefined |" in md
  assert "Mass" not in md  # only the findings asked for
