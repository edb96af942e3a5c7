"""Fine-tuning: partial restore under a new head from every source config.model.init_from accepts
(an import, a run's workdir or step, a bundle, an Orbax PyTree; relative or absolute), and freeze
policies that really freeze, at every stage boundary of every model family."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mdx import config as config_lib
from mdx.inference import bundle as bundle_lib
from mdx.models import pretrained, registry
from mdx.train import checkpoint, finetune, loop

# XLA's optimiser costs more than it saves on a few tiny steps: compiled unoptimised, 3x quicker
# than optimised, and much quicker than op-by-op (each operation compiled on its own)
UNOPTIMISED = {"xla_backend_optimization_level": 0}


def _init(model, x, seed):
  v = registry.init_variables(model, np.shape(x), seed)  # jit (unoptimised) sorts the dict keys
  return v["params"], v["batch_stats"]


def _apply(model, variables, x, **kwargs):
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs), compiler_options=UNOPTIMISED)(
    variables, x
  )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A pretrained densenet_tiny (5 classes) with non-trivial statistics, saved like an import."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
  model = registry.create("densenet_tiny", num_classes=5)
  params, stats = _init(model, x, seed=0)
  _, upd = _apply(
    model, {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
  )
  d = str(tmp_path_factory.mktemp("pre") / "tiny")
  pretrained.save(d, {"params": params, "batch_stats": upd["batch_stats"]}, {"model": "tiny"})
  return d, params, upd["batch_stats"]


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
  "policy,trained",
  [("head", {"head"}), ("from:block2", {"block2", "norm_final", "head"}), ("none", None)],
)
def test_frozen_stay_bit_identical_and_trained_change(source, policy, trained):
  ckpt, ref_params, ref_stats = source
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(2).integers(0, 2, size=(8, 3)), jnp.float32)
  model = registry.create("densenet_tiny", num_classes=3, freeze=policy)
  params, stats = _init(model, x, seed=7)
  params, stats = finetune.restore_backbone(params, stats, ckpt)
  labels = finetune.trainable_labels(params, policy, stages=None)  # order from the names
  assert labels == finetune.trainable_labels(params, policy, stages=model.stages)
  tx = finetune.freeze(optax.adam(1e-2), labels)
  opt_state = tx.init(params)

  @functools.partial(jax.jit, compiler_options=UNOPTIMISED)
  def step(params, stats, opt_state):
    def loss_fn(p):
      logits, upd = model.apply(
        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  for _ in range(3):
    params, stats, opt_state = step(params, stats, opt_state)
  trained = set(model.stages) if trained is None else trained
  ref = _flat({"params": ref_params, "batch_stats": ref_stats})
  for k, v in _flat({"params": params, "batch_stats": stats}).items():
    if k[1] == "head":
      continue  # new head, not in the checkpoint
    same = np.array_equal(np.asarray(v).view(np.uint32), np.asarray(ref[k]).view(np.uint32))
    assert same == (k[1] not in trained), (policy, k)


def test_restore_errors_list_what_does_not_fit(source, tmp_path):
  ckpt = source[0]
  other = registry.create("densenet_tiny", num_classes=3, growth_rate=4)
  params, stats = _init(other, jnp.zeros((1, 32, 32, 3)), 0)
  with pytest.raises(ValueError, match=r"shape mismatches: .*block1/layer1/conv2/kernel"):
    finetune.restore_backbone(params, stats, ckpt)
  deeper = registry.create("densenet_tiny", num_classes=3, block_sizes=(2, 2, 1))
  params, stats = _init(deeper, jnp.zeros((1, 32, 32, 3)), 0)
  with pytest.raises(ValueError, match=r"missing from the checkpoint: .*block3"):
    finetune.restore_backbone(params, stats, ckpt)
  with pytest.raises(FileNotFoundError, match="init_from"):
    finetune.restore_backbone(params, stats, str(tmp_path / "nowhere"))


def test_stem_adapted_to_one_channel_gives_same_response_to_gray(source):
  ckpt, ref_params, ref_stats = source
  gray = np.random.default_rng(3).normal(size=(2, 32, 32, 1)).astype(np.float32)
  rgb_model = registry.create("densenet_tiny", num_classes=5)
  expected = _apply(
    rgb_model, {"params": ref_params, "batch_stats": ref_stats}, np.repeat(gray, 3, -1)
  )
  model = registry.create("densenet_tiny", num_classes=5)
  params, stats = _init(model, jnp.asarray(gray), 1)
  params, stats = finetune.restore_backbone(params, stats, ckpt, exclude=())
  got = _apply(model, {"params": params, "batch_stats": stats}, gray)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_policies_and_order():
  names = ["transition1", "head", "block2", "stem", "norm_final", "block1"]
  assert finetune.stage_order(names) == [
    "stem",
    "block1",
    "transition1",
    "block2",
    "norm_final",
    "head",
  ]
  params = {n: {"w": np.zeros(1)} for n in names}
  labels = finetune.trainable_labels(params, "from:block2")
  assert [n for n in finetune.stage_order(names) if labels[n]["w"] == "train"] == [
    "block2",
    "norm_final",
    "head",
  ]
  with pytest.raises(ValueError, match="block9"):
    finetune.trainable_labels(params, "from:block9")
  with pytest.raises(ValueError, match="unknown"):
    finetune.trainable_labels(params, "last")


# ------------------------------------------------------------------------ where init_from points
def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
    "params": {
      "stem": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
      "head": {"b": np.ones(2)},
    },
    "batch_stats": {"stem": {"mean": rng.normal(size=2).astype(np.float32)}},
  }


def _run_workdir(path, best_metric=None):
  """A run's workdir as the loop writes it: checkpoints/<step>/{state, metrics} for steps 1-3 (by
  val_auroc step 1 is best, by val_ap step 2), and config.json naming train.best_metric."""
  manager = checkpoint.make_manager(os.path.join(path, "checkpoints"), keep_last=3, best_metric="x")
  for step, auroc, ap in ((1, 0.9, 0.1), (2, 0.5, 0.8), (3, 0.7, 0.2)):
    metrics = {"x": 0.0, "val_auroc": auroc, "val_ap": ap}
    checkpoint.save(manager, step, _tree(step), None, metrics)
  manager.wait_until_finished()
  manager.close()
  if best_metric:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump({"train": {"best_metric": best_metric}}, f)


def _bundle(path, variables):
  spec = {
    "task": "classification",
    "model": {"name": "densenet_tiny", "num_classes": 2},
    "input": {"image_size": 32, "channels": 1, "standardize": {"mode": "per_image"}},
    "output": {"findings": ["a", "b"]},
    "thresholds": {"values": {"a": 0.5, "b": 0.5}},
    "calibration": {"method": "none", "maps": {}},
  }
  bundle_lib.write(path, spec, variables, card="test bundle")


def test_init_from_every_source_by_relative_and_absolute_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  pretrained.save("weights/w", _tree(0), {"model": "test"})
  _run_workdir("runs/ap", best_metric="val_ap")
  shutil.copytree("runs/ap", "runs/auroc")
  with open("runs/auroc/config.json", "w") as f:
    json.dump({"train": {"best_metric": "val_auroc"}}, f)
  shutil.copytree("runs/ap", "runs/noconfig")
  os.remove("runs/noconfig/config.json")
  shutil.copytree("runs/ap", "runs/unknown_metric")
  with open("runs/unknown_metric/config.json", "w") as f:
    json.dump({"train": {"best_metric": "val_dice"}}, f)
  _bundle("bundles/b", _tree(5))
  expected = {
    "weights/w": ("weights/w/checkpoint", 0),
    "runs/ap": ("runs/ap/checkpoints/2/state", 2),  # the run's own best metric
    "runs/auroc": ("runs/auroc/checkpoints/1/state", 1),
    "runs/noconfig": ("runs/noconfig/checkpoints/3/state", 3),  # no config: the latest
    "runs/unknown_metric": ("runs/unknown_metric/checkpoints/3/state", 3),
    "runs/ap/checkpoints": ("runs/ap/checkpoints/2/state", 2),
    "runs/ap/checkpoints/3": ("runs/ap/checkpoints/3/state", 3),
    "runs/ap/checkpoints/3/state": ("runs/ap/checkpoints/3/state", 3),  # Orbax PyTree
    "weights/w/checkpoint": ("weights/w/checkpoint", 0),
    "bundles/b": ("bundles/b/variables", 5),
  }
  for given, (want, seed) in expected.items():
    for path in (given, str(tmp_path / given), f"./{given}/"):
      got = finetune.resolve_checkpoint(path)
      assert got == str(tmp_path / want), (path, got)
      # what failed for relative paths: Orbax 0.12's metadata of one is a StepMetadata, no tree
      assert finetune._checkpoint_shapes(os.path.relpath(got)) == (
        {
          ("params", "stem", "w"): (3, 2),
          ("params", "head", "b"): (2,),
          ("batch_stats", "stem", "mean"): (2,),
        },
        ("params",),  # no average kept: the weights as trained
      )
    ref = _tree(seed)["params"]["stem"]["w"]
    assert np.array_equal(pretrained.load(want)["params"]["stem"]["w"], ref), given


def test_checkpoint_metadata_read_whatever_orbax_returns(tmp_path, monkeypatch):
  """A plain dict (older Orbax), a TreeMetadata (.tree) or a StepMetadata (.item_metadata, 0.12)
  all give the tree; one without a tree (what 0.12 gave for a relative path) is a one-line error."""
  import types

  import orbax.checkpoint as ocp

  path = pretrained.save(str(tmp_path / "w"), _tree(0), {})
  real = ocp.PyTreeCheckpointer().metadata(os.path.join(path, pretrained.CHECKPOINT))
  tree = real.item_metadata.tree
  wrapped = [
    tree,
    types.SimpleNamespace(tree=tree),
    types.SimpleNamespace(item_metadata=types.SimpleNamespace(tree=tree)),
  ]
  for md in wrapped:
    monkeypatch.setattr(ocp.PyTreeCheckpointer, "metadata", lambda self, p, md=md: md)
    assert pretrained.shapes(path)["params"]["stem"]["w"] == (3, 2)
  monkeypatch.setattr(
    ocp.PyTreeCheckpointer, "metadata", lambda self, p: types.SimpleNamespace(item_metadata=None)
  )
  with pytest.raises(ValueError, match="returned no array metadata") as e:
    finetune.restore_backbone({}, {}, path)
  assert "\n" not in str(e.value) and path in str(e.value)


def test_init_from_that_is_no_checkpoint_is_a_one_line_error(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs("empty")
  os.makedirs("fresh_run/checkpoints")
  _bundle("b", _tree(0))
  shutil.rmtree("b/variables")
  pretrained.save("w", {"other": {"x": np.ones(2)}}, {})
  cases = {
    "nowhere": (FileNotFoundError, "init_from='nowhere' .* is not a directory"),
    "empty": (FileNotFoundError, "init_from='empty' .* is not a pretrained checkpoint: expected"),
    "fresh_run": (FileNotFoundError, "'fresh_run' .* no complete checkpoint .*train it first"),
    "b": (FileNotFoundError, "'b' .* has no variables/ folder"),
    "w": (ValueError, "has no 'params' at its top"),
  }
  params, stats = {"stem": {"w": np.zeros((3, 2))}}, {}
  for given, (kind, match) in cases.items():
    with pytest.raises(kind, match=match) as e:
      finetune.restore_backbone(params, stats, given)
    assert "\n" not in str(e.value) and str(tmp_path / given) in str(e.value)


def test_restore_from_a_relative_path(source, monkeypatch):
  ckpt, ref_params, ref_stats = source
  monkeypatch.chdir(os.path.dirname(ckpt))
  model = registry.create("densenet_tiny", num_classes=3)
  params, stats = _init(model, jnp.zeros((1, 32, 32, 3)), 1)
  params, stats = finetune.restore_backbone(params, stats, os.path.basename(ckpt))
  ref = _flat({"params": ref_params, "batch_stats": ref_stats})
  for k, v in _flat({"params": params, "batch_stats": stats}).items():
    if k[1] != "head":
      assert _same_bits(v, ref[k]), k


# ---------------------------------------------------------------- freeze at every stage boundary
FAMILIES = [
  ("densenet_tiny", 32),
  ("resnet_tiny", 32),
  ("efficientnet_tiny", 32),
  ("inception_v3", 75),
]


def _policies(stages):
  """(policy, the stages it freezes) for every boundary: 'none', each 'from:<stage>', 'head'."""
  out = [("none", set())]
  out += [(f"from:{s}", set(stages[:i])) for i, s in enumerate(stages)]
  return out + [("head", set(stages[:-1]))]


@pytest.mark.parametrize("name,size", FAMILIES)
def test_freeze_labels_at_every_stage_boundary(name, size):
  """Each policy labels exactly the stages before its boundary frozen, with the order recovered from
  the parameter names alone (mdx.train.classification passes no stage list)."""
  model = registry.create(name, num_classes=2)
  x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
  params = dict(sorted(params.items()))  # the key order jit gives
  stages = list(model.stages)
  assert set(params) == set(stages) and finetune.stage_order(list(params)) == stages
  assert len(_policies(stages)) == len(stages) + 2
  for policy, frozen in _policies(stages):
    for labels in (
      finetune.trainable_labels(params, policy),
      finetune.trainable_labels(params, policy, stages=stages),
    ):
      for stage in stages:
        want = "freeze" if stage in frozen else "train"
        assert set(jax.tree.leaves(labels[stage])) == {want}, (name, policy, stage)


@pytest.mark.parametrize(
  "name,size",
  [
    ("densenet_tiny", 32),
    ("resnet_tiny", 32),
    pytest.param("efficientnet_tiny", 32, marks=pytest.mark.slow),  # ~6 s of tracing
    pytest.param("inception_v3", 75, marks=pytest.mark.slow),  # ~30 s of tracing
  ],
)
def test_frozen_stages_run_batchnorm_on_running_statistics(name, size):
  """In train mode a frozen stage's BatchNorm statistics come out as they went in (the very same
  traced values: nothing computed them), every other stage's are recomputed. Traced, not run."""
  model = registry.create(name, num_classes=2)
  x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  for policy, frozen in _policies(list(model.stages)):
    frozen_model = registry.create(name, num_classes=2, freeze=policy)
    kept = {}

    def apply(v, x, m=frozen_model, kept=kept):
      _, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
      for stage, stats in v["batch_stats"].items():
        same = jax.tree.map(lambda a, b: a is b, upd["batch_stats"][stage], stats)
        kept[stage] = set(jax.tree.leaves(same))
      return 0

    jax.eval_shape(apply, variables, x)
    assert kept == {s: {s in frozen} for s in variables["batch_stats"]}, (name, policy)


# ------------------------------------------------------------------- end to end, through run.run
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_config(init_from, freeze, steps=2, after_train=False, best_metric="val_auroc"):
  c = config_lib.load_experiment(os.path.join(ROOT, "experiments", "tiny_phantoms.py")).get_config()
  c.model.init_from = init_from
  c.model.freeze = freeze
  c.train.steps = steps
  c.train.checkpoint_every = 2
  c.train.best_metric = best_metric
  c.eval.after_train = after_train
  c.eval.gradcam.findings = ()
  return c


def _checkpoint_variables(path):
  """{('params' | 'batch_stats', ...): array} of a run's step (its 'state' item) or an import, read
  with Orbax directly (not through finetune)."""
  shapes = pretrained.shapes(path)
  shapes = {k: shapes[k] for k in ("params", "batch_stats")}
  is_shape = lambda s: isinstance(s, tuple)  # noqa: E731
  target = jax.tree.map(lambda s: np.zeros(s, np.float32), shapes, is_leaf=is_shape)
  return _flat(pretrained.load(path, target))


def _assert_frozen_same_trained_moved(got, ref, trained, where):
  for k, v in got.items():
    if k[1] == "head":
      continue
    if k[1] in trained:
      if k[0] == "params":  # statistics of a layer fed the same batch could coincide: not asserted
        assert not _same_bits(v, ref[k]), (where, k, "trained but unchanged")
    else:
      assert _same_bits(v, ref[k]), (where, k, "frozen but changed")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_finetune_from_imported_weights_a_workdir_and_a_bundle_by_relative_paths(
  tmp_path, monkeypatch
):
  """PyTorch state dict -> import_weights -> fine-tune (head) -> fine-tune from that run's workdir
  (from:block2, best step by its own val_loss) -> fine-tune from that run's workdir again and from
  its bundle: every path relative, frozen variables bit-identical to their source, the rest
  moved."""
  torch = pytest.importorskip("torch")
  from torch_reference import TorchDenseNet, randomize_batchnorm

  from mdx.models import import_weights
  from mdx.train import run as runner
  from mdx.train import state as state_lib

  monkeypatch.chdir(tmp_path)
  torch.manual_seed(0)
  ref = TorchDenseNet(classes=5, cin=1, blocks=(2, 2), growth=8, init=16, bn_size=2)  # tiny
  torch.save(randomize_batchnorm(ref.eval(), 0).state_dict(), "dn_tiny.pt")
  import_weights.import_weights("densenet_tiny", "torch", "dn_tiny.pt", "weights/dn")
  imported = _checkpoint_variables("weights/dn/checkpoint")

  # 1. From the import, only the head trains.
  c = _run_config("weights/dn", "head")
  runner.run(c, "runs/ft", "train")
  got = _checkpoint_variables("runs/ft/checkpoints/2/state")
  _assert_frozen_same_trained_moved(got, imported, {"head"}, "weights/dn")
  resolved = config_lib.resolve(c)  # model.num_classes: the phantoms' findings, counted
  model = registry.create_from_config(resolved.model)
  head0, _ = state_lib.init_variables(model, np.zeros((1, 32, 32, 1), np.float32), c.seed)
  assert not np.array_equal(
    got["params", "head", "dense", "kernel"], head0["head"]["dense"]["kernel"]
  )
  assert got["params", "head", "dense", "kernel"].shape[1] == resolved.model.num_classes  # new

  # 2. From that run's workdir, block2 onwards trains; its best step is chosen by val_loss.
  c = _run_config("runs/ft", "from:block2", steps=4, after_train=True, best_metric="val_loss")
  runner.run(c, "runs/a", "train")
  trained = {"block2", "norm_final", "head"}
  for step in (2, 4):
    got = _checkpoint_variables(f"runs/a/checkpoints/{step}/state")
    _assert_frozen_same_trained_moved(got, imported, trained, f"runs/ft -> step {step}")

  # 3. From runs/a's workdir: its best step by its own metric, the one its report evaluated.
  best = json.load(open("runs/a/evaluated_checkpoint.json"))["step"]
  history = [h for h in loop.History("runs/a", True).read() if "val_loss" in h]
  assert best == max(history, key=lambda h: h["val_loss"])["step"]
  source = _checkpoint_variables(f"runs/a/checkpoints/{best}/state")
  runner.run(_run_config("runs/a", "from:norm_final"), "runs/b", "train")
  got = _checkpoint_variables("runs/b/checkpoints/2/state")
  _assert_frozen_same_trained_moved(got, source, {"norm_final", "head"}, "runs/a")

  # 4. From runs/a's bundle.
  bundled = _flat(bundle_lib.load("runs/a/bundle").variables)
  runner.run(_run_config("runs/a/bundle", "head"), "runs/c", "train")
  got = _checkpoint_variables("runs/c/checkpoints/2/state")
  _assert_frozen_same_trained_moved(got, bundled, {"head"}, "runs/a/bundle")


def test_init_from_passes_over_a_damaged_step_and_refuses_a_changed_bundle(tmp_path, caplog):
  """A run whose best step has an emptied metrics file (Orbax would stop on its JSON at start) gives
  the best intact step instead, naming the file; a bundle whose weights no longer match the
  digests bundle.json records is refused like load refuses it."""
  run = str(tmp_path / "run")
  _run_workdir(run, best_metric="val_ap")  # its best by val_ap: step 2
  metrics = os.path.join(run, "checkpoints", "2", "metrics", "metrics")
  open(metrics, "w").close()
  with caplog.at_level("WARNING"):
    got = finetune.resolve_checkpoint(run)
  assert got == os.path.join(run, "checkpoints", "3", "state")  # val_ap 0.2 of step 3 > 0.1 of 1
  assert f"{metrics} is empty" in caplog.text
  bundle = str(tmp_path / "b")
  _bundle(bundle, _tree(5))
  finetune.resolve_checkpoint(bundle)  # intact
  other = str(tmp_path / "other")
  _bundle(other, _tree(6))
  shutil.rmtree(os.path.join(bundle, "variables"))
  shutil.copytree(os.path.join(other, "variables"), os.path.join(bundle, "variables"))
  with pytest.raises(ValueError, match=r"config.model.init_from=.*variables/.* changed"):
    finetune.resolve_checkpoint(bundle)
