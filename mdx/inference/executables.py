"""Compiled XLA programs kept on disk under a key known before lowering, so a process that serves
a bundle's StableHLO export runs it without tracing, lowering or hashing it again.

Why not only jax's persistent compilation cache (runtime.enable_compilation_cache): jax finds a
program by hashing what it lowered, so every process still traces the call, refines the export's
symbolic batch, and serializes and hashes the module (DenseNet-121 with its 27 MB of weights as
constants: ~0.3 s of predict's start-up), then inflates the entry (~0.1 s). Here the key is
known first: the export's sha256 (bundle.load has checked it), the arguments' shapes, and what
makes a compiled program valid on this machine (jax and jaxlib versions, the platform and its
version, the device kind, compiler options, XLA_FLAGS, the host CPU's instruction-set flags), so a
hit is one file read and loaded.

Files: <jax's compilation cache folder>/mdx_executables/<key>.xla (none when that cache is off),
written whole (a temporary file, then a rename), and bounded with jax's cache as a process starts
(runtime.prune_cache: a program loaded is touched, so the least recently used go first). XLA:CPU
cannot serialize again a program jax read from its own cache (the copy fails when run: "Function
... not found"), so a program is stored only when it was compiled in this process; a stored one
that fails to load or to run is deleted and compiled again. Loading a program runs its code: the
folder must be as trusted as jax's cache (the user's own, ~/.cache/mdx/jax by default).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging
from jax.experimental import serialize_executable

from mdx import outputs, runtime

FOLDER = runtime.EXECUTABLES_FOLDER
SUFFIX = runtime.EXECUTABLES_SUFFIX
_JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def folder() -> str | None:
  """Where programs are kept: beside jax's persistent cache (one setting, MDX_COMPILATION_CACHE,
  moves or disables both); None when that cache is off in this process."""
  root = jax.config.jax_compilation_cache_dir
  return os.path.join(root, FOLDER) if root else None


@functools.cache
def host() -> dict[str, Any]:
  """What a compiled program depends on beyond its inputs: versions, platform, device kind,
  XLA_FLAGS, and on CPU the instruction sets XLA compiled for (a cache folder shared by
  machines of different CPUs must not hand AVX-512 code to one without it)."""
  import jaxlib

  device = jax.local_devices()[0]
  facts: dict[str, Any] = {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "platform": device.platform,
    "platform_version": str(device.client.platform_version),
    "device_kind": device.device_kind,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "machine": platform.machine(),
  }
  if device.platform == "cpu":
    facts["cpu_flags"] = _cpu_flags()
  return facts


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return hashlib.sha256(line.split(":", 1)[1].strip().encode()).hexdigest()
  except OSError:
    pass
  return platform.processor()


def key(facts: Mapping[str, Any]) -> str:
  """The file name of a program described by `facts` (JSON-able) on this host."""
  text = json.dumps({**host(), **facts}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:40]


def load_or_compile(
  jitted: Callable[..., Any],
  args: tuple[Any, ...],
  facts: Mapping[str, Any],
  *,
  directory: str | None = None,
) -> Callable[..., Any]:
  """`jitted` (a jax.jit function) compiled for `args`, as a callable of arguments shaped like
  `args` returning what `jitted` returns. facts: everything besides this host that decides the
  program (e.g. {'export': sha256, 'shape': ..., 'compiler_options': ...}); two calls with equal
  facts must compile the same program. directory: default folder(); None there: no disk."""
  directory = directory or folder()
  if not directory:
    return jitted.lower(*args).compile()
  path = os.path.join(directory, key(facts) + SUFFIX)
  out_tree = jax.tree.structure(jax.eval_shape(jitted, *args))
  stored = _load(path, jax.tree.structure((args, {})), out_tree)
  if stored is not None:
    return _checked_on_first_call(stored, path, lambda: _compile(jitted, args, path))
  return _compile(jitted, args, path)


def _load(path: str, in_tree, out_tree) -> Callable[..., Any] | None:
  try:
    with open(path, "rb") as f:
      data = f.read()
    os.utime(path)  # used now: runtime.prune_cache deletes the programs used least recently
  except OSError:
    return None
  try:
    return serialize_executable.deserialize_and_load(
      data, in_tree, out_tree, execution_devices=jax.local_devices()[:1]
    )
  except Exception as e:  # noqa: BLE001 - XLA and pickle raise many types for a stale file
    logging.info("compiled program %s not loaded (%s); compiling again", path, e)
    _remove(path)
    return None


def _checked_on_first_call(program, path: str, recompile: Callable[[], Any]) -> Callable[..., Any]:
  """A stored program whose first call fails (XLA resolves its kernels then) is deleted and
  replaced by a fresh compile; later calls go straight to whichever serves."""
  serving = [None]

  def call(*args):
    if serving[0] is not None:
      return serving[0](*args)
    try:
      out = jax.block_until_ready(program(*args))
      serving[0] = program
    except jax.errors.JaxRuntimeError as e:
      logging.info("compiled program %s failed (%s); compiling again", path, e)
      _remove(path)
      serving[0] = recompile()
      out = serving[0](*args)
    return out

  return call


def _compile(jitted: Callable[..., Any], args: tuple[Any, ...], path: str):
  hits: list[str] = []
  listener = lambda event, **_: hits.append(event) if event == _JAX_CACHE_HIT else None
  jax.monitoring.register_event_listener(listener)
  try:
    compiled = jitted.lower(*args).compile()
  finally:
    jax.monitoring.unregister_event_listener(listener)
  if hits:  # read from jax's cache: XLA:CPU cannot serialize it again (module docstring)
    return compiled
  try:
    data, _, _ = serialize_executable.serialize(compiled)
    with outputs.atomic_path(path) as tmp, open(tmp, "wb") as f:
      f.write(data)
  except Exception as e:  # noqa: BLE001 - a full or read-only cache folder only costs speed
    logging.info("compiled program not kept in %s (%s)", path, e)
  return compiled


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
