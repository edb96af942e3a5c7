"""The bottom layer: the device mesh, batch geometry, moving data on and off devices, and how steps
compile (XLA options, buffer donation, the compilation cache). One code path for 1 CPU, 4 fake CPU
devices or a TPU pod. Imports nothing of mdx, so data, models, inference, evaluate and train all
may.
"""

from __future__ import annotations

import dataclasses
import functools
import logging as logging_std

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis 'data'."""
  return jax.make_mesh((jax.device_count(),), (DATA,))


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's own devices, axis 'data': for work that needs no collectives
  (predicting a share of the files), so processes never wait for each other."""
  return Mesh(np.array(jax.local_devices()), (DATA,))


def process_share(n: int) -> np.ndarray:
  """The items of range(n) this process handles when work is split by process: a contiguous
  block, blocks in process order, their lengths differing by at most one (all of range(n) with one
  process)."""
  p, count = jax.process_index(), jax.process_count()
  bounds = np.linspace(0, n, count + 1).round().astype(np.int64)
  return np.arange(bounds[p], bounds[p + 1])


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather_rows(local: np.ndarray) -> np.ndarray:
  """Every process's rows [n_p, ...] concatenated in process order, on every process. Shares may
  differ in length (process_share): they are padded for the transfer and cut back."""
  local = np.asarray(local)
  if jax.process_count() == 1:
    return local
  sizes = multihost_utils.process_allgather(np.array([len(local)], np.int64)).ravel()
  padded = np.zeros((int(sizes.max()), *local.shape[1:]), local.dtype)
  padded[: len(local)] = local
  every = np.asarray(multihost_utils.process_allgather(padded))  # [P, max, ...]
  return np.concatenate([every[p, : int(k)] for p, k in enumerate(sizes)])


def check_batch(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
      f"{what}={global_batch} does not divide over {n} devices; choose a multiple of "
      f"{n} (e.g. {max(n, global_batch // n * n)})"
    )


@dataclasses.dataclass(frozen=True)
class BatchGeometry:
  """A global batch and this process's share of it (rows [p * local, (p + 1) * local))."""

  global_batch: int
  process_index: int = 0
  process_count: int = 1

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count


def batch_geometry(
  global_batch: int, mesh: Mesh, what: str = "config.train.batch_size"
) -> BatchGeometry:
  """The geometry of a global batch on `mesh`, checked to divide over its devices (and
  processes)."""
  check_batch(global_batch, mesh, what)
  return BatchGeometry(global_batch, jax.process_index(), jax.process_count())


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax arrays split over the 'data' axis."""
  sharding = NamedSharding(mesh, P(DATA))
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def to_host(tree):
  """Global arrays -> numpy on every host (gathers across hosts when there are several; arrays
  of a local_mesh are this process's own and are only copied)."""
  leaves = jax.tree.leaves(tree)
  if jax.process_count() > 1 and not all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


CACHE_GB = 4.0  # the compilation cache's bound unless MDX_COMPILATION_CACHE_GB says
EXECUTABLES_FOLDER = "mdx_executables"  # mdx.inference.executables' programs, in the cache folder
EXECUTABLES_SUFFIX = ".xla"
# The files of a cache folder that jax or mdx wrote, the only ones prune_cache counts or deletes
# (the folder is the user's to choose: anything else in it is left alone). jax names an entry
# '<function>-<hash>-cache'; a jax that names them otherwise leaves its entries unbounded, never
# another file deleted.
CACHE_FILES = (
  "*-cache",
  f"{EXECUTABLES_FOLDER}/*{EXECUTABLES_SUFFIX}",
  f"{EXECUTABLES_FOLDER}/.*{EXECUTABLES_SUFFIX}.*.tmp",  # outputs.atomic_path's, left by a kill
)


def enable_compilation_cache(directory: str | None = None) -> None:
  """Keeps compiled XLA programs on disk so a resumed run, --mode=eval or a second run skips
  compiling (a DenseNet-121 train step takes tens of seconds to compile on CPU).
  MDX_COMPILATION_CACHE overrides the folder; an empty value turns the cache off. The folder is
  kept under MDX_COMPILATION_CACHE_GB (CACHE_GB by default) as each process starts
  (prune_cache), so a machine that trains and serves many models does not fill its disk."""
  import os

  directory = os.environ.get(
    "MDX_COMPILATION_CACHE",
    directory or os.path.join(os.path.expanduser("~"), ".cache", "mdx", "jax"),
  )
  if not directory:
    return
  given = os.environ.get("MDX_COMPILATION_CACHE_GB", "")
  try:
    gb = float(given) if given else CACHE_GB
  except ValueError:
    gb = float("nan")
  if not 0 < gb < float("inf"):
    raise ValueError(
      f"MDX_COMPILATION_CACHE_GB={given!r}; give the cache's bound in GB, a positive number "
      "(or MDX_COMPILATION_CACHE= to keep no cache)"
    )
  prune_cache(directory, int(gb * 2**30))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def prune_cache(directory: str, max_bytes: int) -> list[str]:
  """Deletes the compiled programs of a cache folder (CACHE_FILES: jax's entries and mdx's
  executables) used least recently until they total at most max_bytes; returns the paths deleted.

  Last use is a file's access or modification time, whichever is later (a read refreshes the
  access time at least daily under Linux's default relatime; mdx.inference.executables also
  touches the programs it loads). A program deleted is only a cache miss: jax and
  mdx.inference.executables compile it again. A file another process deletes first, or one that
  cannot be deleted, is passed over.
  """
  import glob
  import os

  files = []
  for pattern in CACHE_FILES:
    for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
      try:
        st = os.stat(path)
      except OSError:
        continue
      if os.path.isfile(path):
        files.append((max(st.st_atime, st.st_mtime), st.st_size, path))
  total = sum(size for _, size, _ in files)
  removed = []
  for _, size, path in sorted(files):
    if total <= max_bytes:
      break
    try:
      os.remove(path)
    except FileNotFoundError:  # another process's prune came first
      total -= size
      continue
    except OSError:
      continue
    total -= size
    removed.append(path)
  if removed:
    logging.info(
      "compilation cache %s: the %d files used least recently deleted to keep it under %.1f GB",
      directory,
      len(removed),
      max_bytes / 2**30,
    )
  return removed


# XLA:CPU (jaxlib 0.10) hands convolutions, matrix products and reductions to YNNPACK, whose
# convolutions and products run on one thread; its reductions beat XLA's own. Keeping only the
# reductions there lets Eigen run convolutions and products on every core: a DenseNet-121 train step
# ~1.3x faster at 64-128 px (benchmarks/classifiers.py --variants=mdx,xla_cpu_defaults).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def allocator() -> str:
  """The malloc this process runs with: 'tcmalloc' where launch.sh preloaded it (README:
  Performance), 'jemalloc', or 'system malloc'."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return "unknown"
  return next((n for n in ("tcmalloc", "jemalloc") if f"lib{n}" in maps), "system malloc")


@functools.cache
def compiler_options() -> dict:
  """XLA options for mdx's compiled steps on this backend ({} off CPU, or where this jaxlib does not
  know an option: it is then skipped with a warning, not an error)."""
  if jax.default_backend() != "cpu":
    return {}
  if allocator() == "system malloc":
    logging.info(
      "CPU steps run ~1.2x faster with tcmalloc, which ./launch.sh preloads (README: Performance)"
    )
  try:
    jax.jit(lambda x: x.sum(0), compiler_options=CPU_COMPILER_OPTIONS).lower(
      jax.ShapeDtypeStruct((8, 8), np.float32)
    ).compile()
  except Exception as e:  # pylint: disable=broad-except  (XLA raises JaxRuntimeError)
    logging.warning(
      "XLA options %s not applied (%s); CPU steps use XLA's defaults",
      CPU_COMPILER_OPTIONS,
      str(e).splitlines()[0],
    )
    return {}
  return dict(CPU_COMPILER_OPTIONS)


def donate_state() -> bool:
  """Whether compiled steps should reuse the train state's buffers for the new state. On CPU, XLA
  then copies parameters inside the step to keep the old values alive, which costs ~15% of a
  DenseNet-121 step; memory is plentiful there, so only accelerators donate."""
  return jax.default_backend() != "cpu"


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of Orbax and grain (each save/restore logs a dozen lines); keeps
  warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
      part in record.pathname for part in ("/orbax/", "/grain/")
    )


def quiet_library_logs() -> None:
  """For entry points (main, predict, evaluate, sweep): library INFO lines off, warnings kept."""
  from absl import logging

  logging.get_absl_handler().addFilter(_QuietLibraries())


# Environment of a multi-process run on one machine (set by mdx local for each process it starts).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = (
  "MDX_COORDINATOR",
  "MDX_NUM_PROCESSES",
  "MDX_PROCESS_ID",
)


DISTRIBUTED_ENV = "MDX_JAX_DISTRIBUTED"


def join_processes(requested: bool = False) -> None:
  """Joins a multi-process run before anything touches a device.

  Processes started by `./launch.sh local N` (mdx local) find their coordinator, count and rank in
  MDX_COORDINATOR / MDX_NUM_PROCESSES / MDX_PROCESS_ID; with requested (--jax_distributed, or
  MDX_JAX_DISTRIBUTED=1 as ./launch.sh tpu and experiments/slurm.sbatch set) and no such variables,
  jax discovers them itself (TPU VM workers, SLURM). Otherwise a single process.
  """
  import os

  requested = requested or os.environ.get(DISTRIBUTED_ENV, "") not in ("", "0")
  coordinator = os.environ.get(COORDINATOR_ENV)
  if coordinator:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=int(os.environ[NUM_PROCESSES_ENV]),
      process_id=int(os.environ[PROCESS_ID_ENV]),
    )
  elif requested:
    jax.distributed.initialize()


# What a run asks for: MDX_ACCELERATOR=cpu|cuda|gpu|tpu (./launch.sh sets it to the machine it
# detects) or main's --accelerator. JAX falls back to the host CPU when its accelerator plugin is
# missing; a run that asked for one must stop instead of training for days on the CPU.
ACCELERATOR_ENV = "MDX_ACCELERATOR"
_BACKENDS = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "tpu": "tpu"}
_INSTALL = {"gpu": "pip install -e '.[cuda]'", "tpu": "pip install -e '.[tpu]'"}


def require_accelerator(wanted: str | None = None) -> None:
  """Raises ValueError (one line: what is missing and the install command) unless JAX's backend is
  the accelerator asked for: `wanted`, else $MDX_ACCELERATOR; none or 'auto' asks for nothing."""
  import os

  source = "--accelerator" if wanted else ACCELERATOR_ENV
  wanted = (wanted or os.environ.get(ACCELERATOR_ENV, "") or "auto").strip().lower()
  if wanted == "auto":
    return
  if wanted not in _BACKENDS:
    raise ValueError(f"{source}={wanted!r}; choose one of auto, {', '.join(_BACKENDS)}")
  backend, have = _BACKENDS[wanted], jax.default_backend()
  if backend != "cpu" and have != backend:
    raise ValueError(
      f"{source}={wanted} asks for a {backend.upper()} but JAX sees only {have} devices: "
      f"this jaxlib has no {backend.upper()} backend or the device is not visible; install it "
      f"with `{_INSTALL[backend]}` (./launch.sh does when {ACCELERATOR_ENV}={wanted}), or set "
      f"{ACCELERATOR_ENV}=cpu to run on the CPU"
    )


class Preemption:
  """SIGTERM (what spot and preemptible VMs send before they stop) as a step at which every process
  saves and exits.

  With several processes, jax's preemption sync (multihost_utils.reached_preemption_sync_point)
  propagates a notice to all processes and picks one step for all of them; one process alone
  catches SIGTERM itself, until close() gives the previous handler back (a library must not keep
  a process's SIGTERM). reached(step) is cheap: call it after every step from start_step + 1 on.
  """

  def __init__(self, start_step: int = 0):
    import signal

    self.multi = jax.process_count() > 1
    self.start = start_step
    self.notice = False
    self._previous = None
    if not self.multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      except ValueError:  # not the main thread (e.g. a test runner's worker thread): no handler
        pass

  def close(self) -> None:
    import signal

    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.notice = True

  def reached(self, step: int) -> bool:
    if self.multi:
      # jax's sync point is (the largest count any process has reported) + 1, and equality is what
      # it checks; a count that starts at 0 in this process makes a notice that comes before the
      # first step (while it compiles) land on that step. With the step itself, a resumed run
      # (start 3) would be told sync point 1 and miss it forever.
      return bool(multihost_utils.reached_preemption_sync_point(step - self.start))
    return self.notice
