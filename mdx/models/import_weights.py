"""Imports Keras applications .h5 files and PyTorch state dicts into mdx pretrained checkpoints.

  python -m mdx import_weights --model=densenet121 --source=keras_h5 \
      --input=densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --output=/tmp/densenet121_imagenet

Sources: keras_h5 (Keras 2 weight files such as the ImageNet files of keras.applications, with or
without top, and legacy full-model .h5 files); torch (a state dict read with
torch.load(weights_only=True): no pickle code runs; torchvision key names and torchxrayvision's
DenseNet names); safetensors. Every array in the file must land on a variable of the model with
the same shape and every variable of the model (the head aside) must be filled, else a ValueError
lists what does not fit. The head is imported when the file has one (its class count is kept).
torch and safetensors are not installed with mdx (a default install has neither): a --source whose
reader is missing is a ValueError naming the install command (require_reader), before any work.
A file of another format than --source (a text file, a .pt given as keras_h5) is a ValueError
naming the file and the format it looks like, before any reader parses it; on the command line
(mdx.commands.import_weights), one line `error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import datetime
import importlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mdx import outputs
from mdx.models import pretrained, registry

Path = tuple[str, ...]  # ('params' | 'batch_stats', module, ..., leaf)

_BN = {
  "gamma": ("params", "scale"),
  "beta": ("params", "bias"),
  "moving_mean": ("batch_stats", "mean"),
  "moving_variance": ("batch_stats", "var"),
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}
# Keys that carry no weights of the architecture (torch BN step counters, torchxrayvision
# thresholds).
_IGNORED = re.compile(r"(num_batches_tracked|op_threshs|^upsample\.)")


# ---------------------------------------------------------------------------------------- readers
_HDF5 = b"\x89HDF\r\n\x1a\n"  # at offset 0, or 512, 1024, 2048, ... after a user block
_FORMATS = {
  "keras_h5": "a Keras .h5 (HDF5) weight file",
  "torch": "a PyTorch file (torch.save: a zip archive, or a legacy pickle)",
  "safetensors": "a safetensors file",
}


# The package each reader imports, and the command that installs it. torch is pinned to the CPU
# wheel the tests use (its default wheel on Linux brings CUDA, gigabytes mdx does not need).
_PACKAGES = {
  "keras_h5": ("h5py", "pip install h5py"),
  "torch": (
    "torch",
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
  ),
  "safetensors": ("safetensors", "pip install safetensors"),
}


def require_reader(source: str) -> None:
  """A ValueError naming the install command when the package --source's reader needs is missing
  (mdx's default install has no torch or safetensors). Raised before any work."""
  module, install = _PACKAGES[source]
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module:  # the package is there but broken (one of its own imports): its traceback
      raise
    raise ValueError(
      f"--source={source} reads the file with {module}, which is not installed (mdx does not "
      f"install it by default); install it with: {install}"
    ) from None


def sniff(path: str) -> str | None:
  """The weight file format its first bytes show: 'keras_h5', 'torch', 'safetensors' or None.
  Readers check it first: h5py, torch.load and safetensors say 'file signature not found' or
  'pop from empty list' about a wrong file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(16)
    if head.startswith(_HDF5):
      return "keras_h5"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip (torch >= 1.6) / pickle
      return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= size:
      return "safetensors"  # u64 little-endian header length, then the JSON header
    offset = 512
    while offset + 8 <= size:
      f.seek(offset)
      if f.read(8) == _HDF5:
        return "keras_h5"
      offset *= 2
  return None


def _require_format(path: str, source: str) -> None:
  found = sniff(path)
  if found == source:
    return
  hint = (
    f"it looks like {_FORMATS[found]}: use --source={found}"
    if found
    else (
      "its first bytes match none of keras_h5, torch, safetensors (a text file? a download that "
      "failed?)"
    )
  )
  raise ValueError(f"{path} is not {_FORMATS[source]} (--source={source}); {hint}")


def read_keras_h5(path: str) -> dict[str, np.ndarray]:
  """Keras 2 / legacy .h5 -> {'layer_name/weight_name': array}, '/' in layer names made '_'."""
  require_reader("keras_h5")
  import h5py

  _require_format(path, "keras_h5")
  out = {}
  try:
    f = h5py.File(path, "r")
  except OSError as e:  # a signature but a truncated or damaged file
    raise ValueError(f"{path}: h5py cannot open this HDF5 file ({e}); is it complete?") from e
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise ValueError(
        f"{path} is not a Keras 2 / legacy .h5 weight file (no 'layer_names'); a "
        "Keras 3 '.weights.h5' does not keep layer names: save the model with "
        "model.save('file.h5') instead"
      )
    for layer in root.attrs["layer_names"]:
      layer = layer.decode() if isinstance(layer, bytes) else str(layer)
      group = root[layer]
      for weight in group.attrs.get("weight_names", []):
        weight = weight.decode() if isinstance(weight, bytes) else str(weight)
        leaf = weight.split("/")[-1].split(":")[0]
        out[f"{layer.replace('/', '_')}/{leaf}"] = np.asarray(group[weight])
  return out


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A state dict through torch.load(weights_only=True): tensors only, no pickle code runs."""
  import pickle

  require_reader("torch")
  import torch

  _require_format(path, "torch")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # weights_only refused code in the pickle: never run it
    raise ValueError(
      f"{path}: torch.load(weights_only=True) refused it, it holds more than tensors "
      f"({str(e).splitlines()[0]}); save model.state_dict() with torch.save"
    ) from e
  except (RuntimeError, EOFError, IndexError, OSError) as e:  # a damaged zip, a truncated pickle
    raise ValueError(f"{path}: torch.load cannot read it ({e}); is the file complete?") from e
  for key in ("state_dict", "model_state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise ValueError(
      f"{path} holds a {type(obj).__name__}, not a state dict; save "
      "model.state_dict() with torch.save"
    )
  return _strip_prefix(
    {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  )


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  require_reader("safetensors")
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  _require_format(path, "safetensors")
  try:
    tensors = load_file(path)
  except SafetensorError as e:  # a valid start but a damaged header or body
    raise ValueError(f"{path}: safetensors cannot read it ({e}); is the file complete?") from e
  return _strip_prefix({k: np.asarray(v, np.float32) for k, v in tensors.items()})


def _strip_prefix(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Removes 'module.' (DataParallel) and 'model.' wrappers around torchvision names."""
  for prefix in ("module.", "model."):
    if d and all(k.startswith(prefix) for k in d):
      d = {k[len(prefix) :]: v for k, v in d.items()}
  return d


READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
  "keras_h5": read_keras_h5,
  "torch": read_torch,
  "safetensors": read_safetensors,
}


# ------------------------------------------------------------------------------- name mappings
def _bn_or(kind: str, leaf: str, module: Path, array: np.ndarray, torch: bool):
  """(path, array) of one weight of a conv / BN / dense layer, converted to Flax layout."""
  if kind == "bn":
    if leaf not in _BN:
      return None
    collection, name = _BN[leaf]
    return (collection,) + module + (name,), array
  if kind == "conv":
    if leaf in ("kernel", "weight"):
      return ("params",) + module + ("kernel",), array.transpose(2, 3, 1, 0) if torch else array
    if leaf == "bias":
      return ("params",) + module + ("bias",), array
  if kind == "dense":
    if leaf in ("kernel", "weight"):
      return ("params",) + module + ("kernel",), array.T if torch else array
    if leaf == "bias":
      return ("params",) + module + ("bias",), array
  return None


def _densenet_keras(layer: str):
  if m := re.fullmatch(r"conv1_(conv|bn)", layer):
    return m[1], ("stem", m[1])
  if m := re.fullmatch(r"conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)", layer):
    sub = {"0_bn": "bn1", "1_conv": "conv1", "1_bn": "bn2", "2_conv": "conv2"}[m[3]]
    return sub[:-1], (f"block{int(m[1]) - 1}", f"layer{m[2]}", sub)
  if m := re.fullmatch(r"pool(\d)_(conv|bn)", layer):
    return m[2], (f"transition{int(m[1]) - 1}", m[2])
  if layer == "bn":
    return "bn", ("norm_final", "bn")
  if layer in ("predictions", "fc1000"):
    return "dense", ("head", "dense")
  return None


def _densenet_torch(module: str):
  module = re.sub(r"(denselayer\d+\.(?:norm|conv))\.([12])$", r"\1\2", module)  # old torchvision
  if m := re.fullmatch(r"features\.(conv|norm)0", module):
    return ("conv", ("stem", "conv")) if m[1] == "conv" else ("bn", ("stem", "bn"))
  if m := re.fullmatch(r"features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)([12])", module):
    sub = ("bn" if m[3] == "norm" else "conv") + m[4]
    return sub[:-1], (f"block{m[1]}", f"layer{m[2]}", sub)
  if m := re.fullmatch(r"features\.transition(\d+)\.(norm|conv)", module):
    kind = "bn" if m[2] == "norm" else "conv"
    return kind, (f"transition{m[1]}", kind)
  if m := re.fullmatch(r"features\.norm(\d+)", module):
    return "bn", ("norm_final", "bn")
  if module in ("classifier", "fc"):
    return "dense", ("head", "dense")
  return None


def _resnet_keras(layer: str):
  if m := re.fullmatch(r"conv1_(conv|bn)", layer):
    return m[1], ("stem", m[1])
  if m := re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer):
    sub = f"down_{m[4]}" if m[3] == "0" else f"{m[4]}{m[3]}"
    return m[4], (f"layer{int(m[1]) - 1}", f"block{m[2]}", sub)
  if layer in ("predictions", "probs", "fc1000"):
    return "dense", ("head", "dense")
  return None


def _resnet_torch(module: str):
  if module == "conv1":
    return "conv", ("stem", "conv")
  if module == "bn1":
    return "bn", ("stem", "bn")
  if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)", module):
    return m[3], (f"layer{m[1]}", f"block{int(m[2]) + 1}", f"{m[3]}{m[4]}")
  if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])", module):
    kind = "conv" if m[3] == "0" else "bn"
    return kind, (f"layer{m[1]}", f"block{int(m[2]) + 1}", f"down_{kind}")
  if module == "fc":
    return "dense", ("head", "dense")
  return None


# family -> (keras layer mapper, torch module mapper)
MAPPERS = {"DenseNet": (_densenet_keras, _densenet_torch), "ResNet": (_resnet_keras, _resnet_torch)}


def convert(
  model_name: str, source: str, weights: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
  """File arrays -> ({flax path: array}, unmapped file keys, ignored file keys)."""
  cls, _ = registry.model_class(model_name)
  if cls.__name__ not in MAPPERS:
    raise ValueError(
      f"weight import knows {sorted(MAPPERS)} families; model {model_name!r} is a {cls.__name__}"
    )
  keras_map, torch_map = MAPPERS[cls.__name__]
  torch = source != "keras_h5"
  flat, unmapped, ignored = {}, [], []
  for key, array in weights.items():
    if torch and _IGNORED.search(key):
      if not key.endswith("num_batches_tracked"):  # a step counter, not a weight
        ignored.append(key)
      continue
    sep = "." if torch else "/"
    module, _, leaf = key.rpartition(sep)
    hit = (torch_map if torch else keras_map)(module)
    got = hit and _bn_or(hit[0], leaf, hit[1], np.asarray(array, np.float32), torch)
    if not got:
      unmapped.append(key)
      continue
    flat[got[0]] = got[1]
  return flat, unmapped, ignored


def expected_shapes(
  model_name: str, num_classes: int, in_channels: int, **kwargs: Any
) -> dict[Path, tuple[int, ...]]:
  model = registry.create(model_name, num_classes=num_classes, **kwargs)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, in_channels)))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes)).items()}


def check(
  flat: dict[Path, np.ndarray],
  expected: dict[Path, tuple[int, ...]],
  unmapped: list[str],
  model_name: str,
  head_optional: bool = True,
) -> None:
  """ValueError listing missing, unexpected and mis-shaped weights (nothing is silently dropped)."""
  has_head = any(k[1] == "head" for k in flat)
  missing = [
    k for k in expected if k not in flat and not (head_optional and not has_head and k[1] == "head")
  ]
  unexpected = [k for k in flat if k not in expected]
  wrong = [
    f"{'/'.join(k)}: file {flat[k].shape} vs model {expected[k]}"
    for k in flat
    if k in expected and tuple(flat[k].shape) != expected[k]
  ]
  problems = []
  for title, items in (
    ("file keys with no place in the model", unmapped),
    ("model variables missing from the file", ["/".join(k) for k in missing]),
    ("file weights the model does not have", ["/".join(k) for k in unexpected]),
    ("shape mismatches", wrong),
  ):
    if items:
      shown = "\n    ".join(items[:20]) + (
        f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
      )
      problems.append(f"  {len(items)} {title}:\n    {shown}")
  if problems:
    raise ValueError(
      f"the weights do not fit model {model_name!r}:\n"
      + "\n".join(problems)
      + "\nCheck --model (e.g. densenet121 vs densenet169; Keras applications' "
      "ResNet50 is 'resnet50_keras') and --source."
    )


def import_weights(
  model_name: str, source: str, input_path: str, output_dir: str | None = None, **model_kwargs: Any
) -> dict[str, Any]:
  """Reads, maps, checks and (with output_dir) saves; returns {'params', 'batch_stats'}."""
  if source not in READERS:
    raise ValueError(f"--source={source!r} is unknown; choose one of {sorted(READERS)}")
  require_reader(source)
  if not os.path.exists(input_path):
    raise FileNotFoundError(f"weight file {input_path} does not exist")
  flat, unmapped, ignored = convert(model_name, source, READERS[source](input_path))
  stem = [v for k, v in flat.items() if k[1:3] == ("stem", "conv") and k[-1] == "kernel"]
  head = flat.get(("params", "head", "dense", "kernel"))
  in_channels = stem[0].shape[2] if stem else 3
  num_classes = head.shape[1] if head is not None else 1
  check(
    flat,
    expected_shapes(model_name, num_classes, in_channels, **model_kwargs),
    unmapped,
    model_name,
  )
  variables = traverse_util.unflatten_dict(flat)
  if output_dir:
    pretrained.save(
      output_dir,
      variables,
      dict(
        model=model_name,
        model_kwargs=model_kwargs,
        source=source,
        input=os.path.abspath(input_path),
        input_sha256=outputs.digest(input_path),
        head_num_classes=None if head is None else int(num_classes),
        in_channels=int(in_channels),
        ignored_keys=ignored,
        created=datetime.datetime.now(datetime.UTC).isoformat(),
      ),
    )
  return variables
