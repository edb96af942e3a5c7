"""Grad-CAM for any Flax Linen classifier, without the model's cooperation.

Selvaraju et al. (2017): weight each channel k of a feature map A by the spatial mean of
d logit_c / d A_k, sum, ReLU, upsample. The feature map is taken from a named submodule through
`flax.linen.intercept_methods`: the interceptor records the submodule's output and adds a zero
`delta` to it, so the gradient of the logit with respect to delta is the gradient with respect to
the feature map. The model needs no hooks; models may name their default layer in a class attribute
`gradcam_layer` (otherwise the last submodule that outputs a 4-D feature map is used).

grad_cam_report drives it for a run's report: positive test images per finding, overlays, and,
where the data knows where each lesion was drawn (phantoms), how often the heat map points at it.
It takes plain arrays and callables, so a report needs no training task to make it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mdx import jsonio, outputs, runtime


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def _apply(model, variables, images):
  return model.apply(variables, images, train=False)


def feature_maps(model: nn.Module, variables, images) -> list[tuple[str, tuple[int, ...]]]:
  """(path, shape) of every submodule output that is a 4-D [B, h, w, K] map, in completion order."""
  found: list[tuple[str, tuple[int, ...]]] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (
      context.method_name == "__call__"
      and isinstance(out, jax.Array)
      and out.ndim == 4
      and context.module.path
    ):
      found.append((_path(context.module), tuple(out.shape)))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: _apply(model, v, x), variables, jnp.asarray(images))
  return found


def _matches(layer: str, paths) -> list[str]:
  """Paths equal to layer, else those ending with its '/'-separated components."""
  want = tuple(layer.strip("/").split("/"))
  if "/".join(want) in paths:
    return ["/".join(want)]
  return sorted({p for p in paths if tuple(p.split("/"))[-len(want) :] == want})


def resolve_layer(
  model: nn.Module, variables, images, layer: str | None
) -> tuple[str, tuple, object]:
  """The full path, output shape and dtype of the layer Grad-CAM reads.

  `layer` is a '/'-joined path ('backbone/DenseBlock_3') or its unique tail ('DenseBlock_3');
  None uses the model's `gradcam_layer` attribute, else the last 4-D feature map.
  """
  dtypes: dict[str, tuple[tuple, object]] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(out, jax.Array) and context.module.path:
      dtypes.setdefault(_path(context.module), (tuple(out.shape), out.dtype))
      order.append(_path(context.module))
    return out

  order: list[str] = []
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: _apply(model, v, x), variables, jnp.asarray(images))
  maps = [p for p in order if len(dtypes[p][0]) == 4]
  if layer is None:
    layer = getattr(type(model), "gradcam_layer", None) or getattr(model, "gradcam_layer", None)
    if layer is not None and not _matches(layer, dtypes):
      logging.warning(
        "Grad-CAM: %s.gradcam_layer %r is not a layer of this instance; using the "
        "last 4-D feature map instead",
        type(model).__name__,
        layer,
      )
      layer = None
    if layer is None:
      if not maps:
        raise ValueError(
          f"{type(model).__name__} has no submodule that outputs a 4-D feature map; "
          "Grad-CAM needs a convolutional layer"
        )
      layer = maps[-1]
  hits = _matches(layer, dtypes)
  if len(hits) != 1:
    what = "matches several layers " + str(hits) if hits else "matches no layer"
    raise ValueError(
      f"Grad-CAM layer {layer!r} {what} of {type(model).__name__}; "
      f"4-D feature maps are: {sorted(set(maps))}"
    )
  full = hits[0]
  shape, dtype = dtypes[full]
  if len(shape) != 4:
    raise ValueError(f"Grad-CAM layer {full!r} outputs shape {shape}, not a 4-D [B, h, w, K] map")
  return full, shape, dtype


def grad_cam(
  model: nn.Module,
  variables,
  images,
  class_index: int,
  layer: str | None = None,
  *,
  upsample: bool = True,
) -> np.ndarray:
  """Grad-CAM heat maps [B, H, W] in [0, 1] for logit `class_index` (model in eval mode).

  images: [B, H, W, C] as the model takes them. layer: see resolve_layer. upsample=False returns
  the maps at the layer's resolution [B, h, w]. A map whose ReLU is zero everywhere stays zero.
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  key = (model, layer, images.shape, images.dtype)
  if key not in _LAYERS:
    _LAYERS[key] = resolve_layer(model, variables, images, layer)
  path, shape, dtype = _LAYERS[key]
  compute = _compiled(model, path, shape, dtype, upsample)
  return np.asarray(compute(variables, images, jnp.int32(class_index)))


# Compiled once per (model, layer, shape): predict and the run report call grad_cam chunk by chunk
# and finding by finding; the class index is an argument, not a constant of the program.
_LAYERS: dict = {}


@functools.lru_cache(maxsize=16)
def _compiled(model: nn.Module, path: str, shape, dtype, upsample: bool):
  def logit_and_features(delta, variables, images, class_index):
    feats: list[jax.Array] = []

    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and not feats and _path(context.module) == path:
        feats.append(out)
        out = out + delta
      return out

    with nn.intercept_methods(add_delta):
      logits = _apply(model, variables, images)
    return jnp.take(logits, class_index, axis=1).astype(jnp.float32).sum(), feats[0]

  @functools.partial(jax.jit, compiler_options=runtime.compiler_options())
  def compute(variables, images, class_index):
    grads, feats = jax.grad(logit_and_features, has_aux=True)(
      jnp.zeros(shape, dtype), variables, images, class_index
    )
    alpha = grads.astype(jnp.float32).mean(axis=(1, 2))  # [B, K]
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", feats.astype(jnp.float32), alpha))
    if upsample:
      cam = jax.image.resize(cam, (cam.shape[0],) + tuple(images.shape[1:3]), "bilinear")
      cam = jnp.maximum(cam, 0.0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)

  return compute


def peak_in_mask_rate(heatmaps, masks, tolerance: int = 0) -> float:
  """Share of images whose heat-map peak (argmax) lies inside the mask. Masks [B, H, W] bool.

  tolerance > 0 counts a peak within that many pixels (Chebyshev distance) of the mask as a hit,
  as in the "pointing game" (Zhang et al. 2018): a coarse feature map cannot point finer than its
  cell size.
  """
  heat = np.asarray(heatmaps)
  masks = np.asarray(masks, bool)
  if heat.shape != masks.shape or heat.ndim != 3:
    raise ValueError(f"heatmaps {heat.shape} and masks {masks.shape} must both be [B, H, W]")
  empty = np.flatnonzero(~masks.reshape(len(masks), -1).any(1))
  if len(empty):
    raise ValueError(f"masks {empty.tolist()} are empty: pass only images that show the finding")
  if tolerance > 0:
    from scipy import ndimage

    masks = ndimage.binary_dilation(masks, np.ones((1, 2 * tolerance + 1, 2 * tolerance + 1), bool))
  flat = heat.reshape(len(heat), -1).argmax(1)
  return float(masks.reshape(len(masks), -1)[np.arange(len(masks)), flat].mean())


def overlay_png(image, heatmap, path: str, title: str | None = None, mask=None) -> str:
  """Saves the image in grey with the heat map over it (and the mask's outline if given) as PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  img = np.asarray(image, np.float64)
  if img.ndim == 3:
    img = img.mean(-1) if img.shape[-1] > 1 else img[..., 0]
  heat = np.asarray(heatmap, np.float64)
  if img.shape != heat.shape:
    raise ValueError(
      f"image {img.shape} and heat map {heat.shape} must have the same height and width"
    )
  lo, hi = np.nanmin(img), np.nanmax(img)
  img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
  axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
  axes[0].set_title("image", fontsize=9)
  axes[1].imshow(img, cmap="gray", vmin=0, vmax=1)
  shown = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
  axes[1].set_title("Grad-CAM", fontsize=9)
  if mask is not None:
    for ax in axes:
      ax.contour(np.asarray(mask, float), levels=[0.5], colors="white", linewidths=0.8)
  for ax in axes:
    ax.axis("off")
  fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _resize_mask(mask, shape) -> np.ndarray:
  """Nearest-neighbour resize of a bool mask [h, w] to the heat map's resolution."""
  mask = np.asarray(mask, bool)
  if mask.shape != tuple(shape):
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    mask = mask[rows][:, cols]
  return mask


def _necklace_hits(heat: np.ndarray, masks: Sequence[np.ndarray], tolerance: int = 4) -> dict:
  """How often the heat-map peak lies within `tolerance` px of the necklace, and how much of the
  image that zone covers (the rate a peak placed at random would reach)."""
  from scipy import ndimage

  masks = np.stack([_resize_mask(m, heat.shape[1:]) for m in masks])
  drawn = masks.reshape(len(masks), -1).any(1)
  if not drawn.any():
    return {}
  zone = ndimage.binary_dilation(
    masks[drawn], np.ones((1, 2 * tolerance + 1, 2 * tolerance + 1), bool)
  )
  return {
    f"peak_within_{tolerance}px_of_necklace": peak_in_mask_rate(heat[drawn], zone),
    f"necklace_share_within_{tolerance}px": float(zone.mean()),
  }


def grad_cam_report(
  model: nn.Module,
  variables,
  model_inputs: Callable[[Sequence[int]], np.ndarray],
  *,
  labels,
  probs,
  index,
  findings: Sequence[str],
  out_dir: str,
  gradcam_findings: Sequence[str] = (),
  images: int = 64,
  overlays: int = 4,
  layer: str | None = None,
  lesion_masks: Callable[[int], Mapping[str, np.ndarray]] | None = None,
  necklace_masks: Callable[[int], np.ndarray] | None = None,
  summary_path: str | None = None,
) -> list[tuple[str, str]]:
  """Grad-CAM overlays for positive images of chosen findings, and gradcam.json.

  labels [N, C] (nan unknown), probs [N, C] and index [N] (record indices) are the rows of the
  evaluated split, findings its C names; model_inputs(record indices) -> [B, H, W, C] images as the
  model sees them. For each finding of gradcam_findings the model has, the first `images` positive
  rows get heat maps at `layer` (None or "": the model's default) and the first `overlays` of them
  a PNG out_dir/gradcam_{finding}_{j}.png. lesion_masks(record index) -> {finding: bool [h, w]}
  (a finding absent = no lesion drawn) adds the share of heat-map peaks inside the lesion
  (peak_in_lesion) and within 4 px of it. The summary {finding: {images, layer, peak_in_lesion,
  peak_within_4px_of_lesion}} goes to summary_path (default out_dir/gradcam.json).
  necklace_masks(record index) -> bool [h, w] (the phantoms' per-patient necklace, a shortcut a
  model can memorise when a patient is in train and test) adds peak_within_4px_of_necklace and, as
  its chance level, necklace_share_within_4px (the share of the image a random peak would hit).
  Returns (caption, png) pairs for the report.
  """
  labels, probs, index = np.asarray(labels), np.asarray(probs), np.asarray(index)
  findings = list(findings)
  figures, summary = [], {}
  for finding in gradcam_findings:
    if finding not in findings:
      continue
    k = findings.index(finding)
    rows = np.flatnonzero(labels[:, k] == 1)[:images]
    if len(rows) == 0:
      continue
    records = index[rows]
    x = model_inputs(records)
    heat = grad_cam(model, variables, x, k, layer or None)
    entry = {"images": int(len(rows)), "layer": layer or getattr(model, "gradcam_layer", None)}
    masks = None
    if lesion_masks is not None:
      masks = []
      for i in records:
        mask = lesion_masks(int(i)).get(finding)
        masks.append(
          np.zeros(heat.shape[1:], bool) if mask is None else _resize_mask(mask, heat.shape[1:])
        )
      masks = np.stack(masks)
      nonempty = masks.reshape(len(masks), -1).any(1)
      if nonempty.any():
        entry["peak_in_lesion"] = peak_in_mask_rate(heat[nonempty], masks[nonempty])
        # the "pointing game" tolerance: a coarse feature map cannot point finer than its cell
        entry["peak_within_4px_of_lesion"] = peak_in_mask_rate(
          heat[nonempty], masks[nonempty], tolerance=4
        )
    if necklace_masks is not None:
      entry.update(_necklace_hits(heat, [necklace_masks(int(i)) for i in records]))
    summary[finding] = entry
    for j in range(min(overlays, len(rows))):
      path = os.path.join(out_dir, f"gradcam_{finding}_{j}.png")
      overlay_png(
        x[j],
        heat[j],
        path,
        title=f"{finding}: p={probs[rows[j], k]:.2f}",
        mask=None if masks is None else masks[j],
      )
      rate = entry.get("peak_in_lesion")
      caption = (
        f"Grad-CAM for {finding} ({entry['layer']}); peak inside the drawn lesion in "
        f"{rate:.0%} of {len(rows)} positive test images"
        if rate is not None
        else f"Grad-CAM for {finding} ({entry['layer']})"
      )
      figures.append((caption, path))
  summary_path = summary_path or os.path.join(out_dir, "gradcam.json")
  # an undefined rate (nan) is null, as in every JSON mdx writes; the file whole or not at all
  outputs.write_json(summary_path, jsonio.jsonable(summary))
  logging.info("Grad-CAM: %s", summary)
  return figures
