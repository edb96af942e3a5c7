"""Imported weights reproduce the reference frameworks (Keras, PyTorch) on the same input."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # eager initialisers: ~10x faster than jax

import h5py
import jax
import numpy as np
import pytest
from torch_reference import TorchDenseNet, randomize_batchnorm

from mdx import outputs
from mdx.models import import_weights, pretrained, registry

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _randomize_keras_bn(model, rng):
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      g, b, m, v = layer.get_weights()
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, g.shape),
          rng.normal(0, 0.1, b.shape),
          rng.normal(0, 0.1, m.shape),
          rng.uniform(0.5, 1.5, v.shape),
        ]
      )


def _as_keras2_weight_file(src: str, dst: str) -> None:
  """Rewrites a legacy full-model .h5 in the layout of the keras.applications ImageNet files:
  root 'layer_names', layer names with '/' ('conv1/conv'), weight names ending in ':0'."""
  with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
    root = fin["model_weights"]
    names = []
    for layer in root.attrs["layer_names"]:
      layer = layer.decode() if isinstance(layer, bytes) else layer
      new = layer.replace("_", "/", 1) if layer.startswith(("conv", "pool")) else layer
      names.append(new.encode())
      g = fout.create_group(new)
      wnames = []
      for w in root[layer].attrs["weight_names"]:
        w = w.decode() if isinstance(w, bytes) else w
        leaf = f"{new}/{w.split('/')[-1]}:0"
        g.create_dataset(leaf[len(new) + 1 :], data=np.asarray(root[layer][w]))
        wnames.append(leaf[len(new) + 1 :].encode())
      g.attrs["weight_names"] = wnames
    fout.attrs["layer_names"] = names


def _mdx_logits(name, variables, x, **kwargs):
  num_classes = variables["params"]["head"]["dense"]["kernel"].shape[1]
  model = registry.create(name, num_classes=num_classes, **kwargs)
  # compiled once: op-by-op DenseNet-121 takes ~5x longer to dispatch than to compile whole
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


@pytest.mark.slow
def test_keras_densenet121_same_outputs_both_h5_layouts(tmp_path):
  rng = np.random.default_rng(0)
  ref = keras.applications.DenseNet121(
    weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None
  )
  _randomize_keras_bn(ref, rng)
  ref.save(tmp_path / "full.h5")
  _as_keras2_weight_file(str(tmp_path / "full.h5"), str(tmp_path / "keras2.h5"))
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  expected = keras.ops.convert_to_numpy(ref(x, training=False))
  for i, f in enumerate(["full.h5", "keras2.h5"]):
    out = tmp_path / f"out{i}"
    import_weights.import_weights("densenet121", "keras_h5", str(tmp_path / f), str(out))
    variables = pretrained.load(str(out))
    assert np.abs(_mdx_logits("densenet121", variables, x) - expected).max() < 1e-4
  assert pretrained.provenance(str(out))["input_sha256"] == outputs.digest(tmp_path / f)


@pytest.mark.slow  # a full-size Keras model beside mdx's: the full tier
def test_keras_densenet121_without_top_and_wrong_model(tmp_path):
  ref = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(32, 32, 3))
  ref.save(tmp_path / "notop.h5")
  variables = import_weights.import_weights("densenet121", "keras_h5", str(tmp_path / "notop.h5"))
  assert "head" not in variables["params"] and "norm_final" in variables["batch_stats"]
  with pytest.raises(ValueError, match=r"model variables missing.*\n.*block3/layer25"):
    import_weights.import_weights("densenet169", "keras_h5", str(tmp_path / "notop.h5"))


@pytest.mark.slow  # a full-size Keras model beside mdx's: the full tier
def test_keras_resnet50_same_outputs(tmp_path):
  rng = np.random.default_rng(1)
  ref = keras.applications.ResNet50(
    weights=None, input_shape=(32, 32, 3), classes=4, classifier_activation=None
  )
  _randomize_keras_bn(ref, rng)
  ref.save(tmp_path / "r.h5")
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = import_weights.import_weights("resnet50_keras", "keras_h5", str(tmp_path / "r.h5"))
  got = _mdx_logits("resnet50_keras", variables, x)
  assert np.abs(got - keras.ops.convert_to_numpy(ref(x, training=False))).max() < 1e-4
  with pytest.raises(ValueError, match="resnet50_keras"):  # torchvision layout has no conv biases
    import_weights.import_weights("resnet50", "keras_h5", str(tmp_path / "r.h5"))


def _torch_densenet121(seed=0, cin=1):
  torch.manual_seed(seed)
  return randomize_batchnorm(TorchDenseNet(cin=cin).eval(), seed)


@pytest.mark.slow
def test_torch_densenet121_same_outputs_torch_and_safetensors(tmp_path):
  ref = _torch_densenet121(cin=1)  # one channel, as torchxrayvision's DenseNet-121
  state = ref.state_dict()
  state["op_threshs"] = torch.rand(3)  # torchxrayvision's extra buffer: ignored, and reported
  torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "sd.pt")
  x = np.random.default_rng(2).normal(size=(2, 32, 32, 1)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  import_weights.import_weights(
    "densenet121", "torch", str(tmp_path / "sd.pt"), str(tmp_path / "o")
  )
  variables = pretrained.load(str(tmp_path / "o"))
  assert np.abs(_mdx_logits("densenet121", variables, x) - expected).max() < 1e-4
  assert pretrained.provenance(str(tmp_path / "o"))["ignored_keys"] == ["op_threshs"]

  from safetensors.torch import save_file

  save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "sd.safetensors")
  variables = import_weights.import_weights(
    "densenet121", "safetensors", str(tmp_path / "sd.safetensors")
  )
  assert np.abs(_mdx_logits("densenet121", variables, x) - expected).max() < 1e-4


def test_mismatches_are_listed(tmp_path):
  state = TorchDenseNet(blocks=(2, 2), growth=8, init=16, bn_size=2, cin=3).state_dict()
  state["features.norm0.weight"] = torch.ones(17)
  state["features.extra.weight"] = torch.ones(2)
  torch.save(state, tmp_path / "bad.pt")
  with pytest.raises(ValueError) as e:
    import_weights.import_weights("densenet_tiny", "torch", str(tmp_path / "bad.pt"))
  msg = str(e.value)
  assert "features.extra.weight" in msg and "params/stem/bn/scale: file (17,) vs model (16,)" in msg
  with pytest.raises(FileNotFoundError):
    import_weights.import_weights("densenet_tiny", "torch", str(tmp_path / "none.pt"))


class _Payload:  # a pickled object: torch.load(weights_only=True) must refuse to build it
  def __reduce__(self):
    return (os.getcwd, ())


def test_a_file_of_another_format_is_a_value_error_naming_it(tmp_path):
  """Without the format check: h5py 'file signature not found', torch 'pop from empty list'."""
  from safetensors.torch import save_file

  text = tmp_path / "weights.txt"
  text.write_text("not weights\n")
  state = TorchDenseNet(blocks=(2, 2), growth=8, init=16, bn_size=2, cin=3).state_dict()
  torch.save(state, tmp_path / "w.pt")
  save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
  with h5py.File(tmp_path / "w.h5", "w") as f:
    f.attrs["layer_names"] = []
  found = {
    "keras_h5": tmp_path / "w.h5",
    "torch": tmp_path / "w.pt",
    "safetensors": tmp_path / "w.safetensors",
  }
  for source, path in found.items():
    assert import_weights.sniff(str(path)) == source
  assert import_weights.sniff(str(text)) is None
  for source in found:
    with pytest.raises(ValueError, match=rf"{text} is not .*--source={source}.*a text file"):
      import_weights.import_weights("densenet_tiny", source, str(text))
  # a real file given as another source: the message names the right --source
  with pytest.raises(ValueError, match=r"w\.pt is not a Keras .* use --source=torch"):
    import_weights.import_weights("densenet_tiny", "keras_h5", str(tmp_path / "w.pt"))
  with pytest.raises(ValueError, match=r"w\.h5 is not a safetensors .* use --source=keras_h5"):
    import_weights.import_weights("densenet_tiny", "safetensors", str(tmp_path / "w.h5"))
  # damaged files of the right kind: ValueError naming them, not the library's own exception
  data = (tmp_path / "w.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.pt: torch\.load cannot read it"):
    import_weights.read_torch(str(tmp_path / "cut.pt"))
  data = (tmp_path / "w.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
  with pytest.raises(ValueError, match=r"cut\.safetensors: safetensors cannot read it"):
    import_weights.read_safetensors(str(tmp_path / "cut.safetensors"))
  # a pickle with code is still refused, now as a ValueError (no code ran)
  torch.save({"x": _Payload()}, tmp_path / "code.pt")
  with pytest.raises(ValueError, match=r"code\.pt: torch\.load\(weights_only=True\) refused it"):
    import_weights.read_torch(str(tmp_path / "code.pt"))
