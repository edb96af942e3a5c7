"""The device mesh and moving data onto it: one code path for 1 CPU, 4 fake CPUs or a TPU pod."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis 'data'."""
  return jax.make_mesh((jax.device_count(),), (DATA,))


def check_batch(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} does not divide over {n} devices; choose a multiple of "
                     f"{n} (e.g. {max(n, global_batch // n * n)})")


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax arrays split over the 'data' axis."""
  sharding = NamedSharding(mesh, P(DATA))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def to_host(tree):
  """Global arrays -> numpy on every host (gathers across hosts when there are several)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def enable_compilation_cache(directory: str | None = None) -> None:
  """Keeps compiled XLA programs on disk so a resumed run, --mode=eval or a second run skips compiling
  (a DenseNet-121 train step takes tens of seconds to compile on CPU). MDX_COMPILATION_CACHE overrides
  the folder; an empty value turns the cache off."""
  import os
  directory = os.environ.get("MDX_COMPILATION_CACHE", directory or
                             os.path.join(os.path.expanduser("~"), ".cache", "mdx", "jax"))
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
