#!/usr/bin/env bash
# The one command a person types. Creates .venv from pyproject.toml when missing or stale.
#   ./launch.sh demo [WORKDIR] [flags]             default experiment end to end; prints where the report is
#   ./launch.sh test [--all] [pytest args]         the fast test tier; --all: the full suite
#   ./launch.sh lint                               ruff check and ruff format --check (as CI runs them)
#   ./launch.sh train CONFIG --workdir=DIR [flags] train (resumes if DIR has checkpoints), then report
#   ./launch.sh eval CONFIG --workdir=DIR [flags]  report and bundle from the best checkpoint of DIR
#   ./launch.sh export CONFIG --workdir=DIR --step=N [--output=BUNDLE]   a bundle of any kept step
#   ./launch.sh export-model --bundle=DIR --format=onnx|stablehlo [--output=F] [flags]   the network for deployment
#   ./launch.sh predict --bundle=DIR --input=IN --output=OUT [flags]   a bundle on new files
#   ./launch.sh evaluate --bundle=DIR --config=DATASET --out=OUT   external validation of a bundle
#   ./launch.sh prepare CONFIG [flags]             build a real dataset's records ahead (train does it on first use)
#   ./launch.sh check CONFIG [--cold] [--out=DIR]  decode every record of CONFIG's data once, as train does first
#   ./launch.sh sweep ABLATION --workdir=DIR [--config.FIELD=V] [flags]   every variant x seed, its report (resumes)
#   ./launch.sh split|audit|consensus|import_weights|from_weights|main [flags]   python -m mdx COMMAND [flags]
#   ./launch.sh findings|card|generalisation [flags]   label space, dataset card, generalisation matrix
#   ./launch.sh fingerprint --config=CONFIG [--output=F] [--plan_output=F]   a 3D dataset's fingerprint and plan
#   ./launch.sh crossval CONFIG --workdir=DIR [--folds=5]   k folds, out-of-fold results, their ensemble bundle
#   ./launch.sh local N <command> ...              the command as N joined processes on this machine
#   ./launch.sh tpu NAME ZONE <command> ...        the same command on every worker of a Cloud TPU VM
#   ./launch.sh bench densenet|unet3d|predict|checkpoint [flags]   speed beside PyTorch / MONAI (README: Performance)
#   ./launch.sh setup                              only install (e.g. once before srun on a cluster)
# MDX_ACCELERATOR=cpu|cuda|tpu overrides the accelerator detected here; its JAX build is installed
# and a run stops with an error if JAX cannot use it (instead of training on the host CPU).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MDX_VENV:-.venv}"

# The accelerator of this machine: $MDX_ACCELERATOR, else an NVIDIA GPU (nvidia-smi lists one), a
# Cloud TPU VM (/dev/accel* or /dev/vfio/N devices, or TPU_* variables), else the CPU.
detect_accelerator() {
  if [[ -n "${MDX_ACCELERATOR:-}" ]]; then echo "$MDX_ACCELERATOR"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then echo cuda
  elif compgen -G "/dev/accel*" >/dev/null || compgen -G "/dev/vfio/[0-9]*" >/dev/null \
       || [[ -n "${TPU_ACCELERATOR_TYPE:-}${TPU_NAME:-}" ]]; then echo tpu
  else echo cpu; fi
}

# Whether $VENV holds an install, newer than pyproject.toml, whose extras include all of "$@"
# (a venv set up for the tests also serves the demo: no second install).
installed_with() {
  local stamp extra ok
  for stamp in "$VENV"/.mdx-installed*; do
    [[ -e "$stamp" && ! pyproject.toml -nt "$stamp" ]] || continue
    ok=1
    for extra in "$@"; do [[ "$stamp" == *"-$extra"* ]] || ok=0; done
    [[ $ok == 1 ]] && return 0
  done
  return 1
}

# setup [EXTRA]: the package with the accelerator's extra (and EXTRA, e.g. test) into $VENV, again
# whenever pyproject.toml is newer than the last install of that combination.
setup() {
  local accelerator extras=() target="." stamp
  accelerator="$(detect_accelerator)"
  case "$accelerator" in
    cpu) ;;
    cuda|gpu) extras+=(cuda) ;;
    tpu) extras+=(tpu) ;;
    *) echo "launch.sh: MDX_ACCELERATOR=$accelerator; choose cpu, cuda or tpu" >&2; exit 2 ;;
  esac
  [[ -n "${1:-}" ]] && extras+=("$1")
  stamp="$VENV/.mdx-installed"
  if [[ ${#extras[@]} -gt 0 ]]; then
    target=".[$(IFS=,; echo "${extras[*]}")]"; stamp+="$(printf -- '-%s' "${extras[@]}")"
  fi
  if [[ ! -x "$VENV/bin/python" ]] || ! installed_with "${extras[@]}"; then
    echo "launch.sh: installing mdx$([[ "$target" != . ]] && echo " with $target") into $VENV (first run takes a few minutes)" >&2
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$target"
    touch "$stamp"
  fi
  export PATH="$(cd "$VENV" && pwd)/bin:$PATH"  # $MDX_VENV may be relative or absolute
  # a detected accelerator is a requirement: the run stops if JAX cannot use it (mdx.runtime)
  export MDX_ACCELERATOR="$accelerator"
  use_tcmalloc
}

# XLA:CPU allocates and frees every step's large buffers; glibc's malloc hands them back to the
# kernel and page-faults them in again each step, tcmalloc keeps them: a DenseNet-121 train step
# ~1.2x faster, compiles ~1.4x faster (README: Performance).
# MDX_MALLOC=system keeps glibc's malloc. As root with apt-get, setup installs the library once.
use_tcmalloc() {
  [[ "${MDX_MALLOC:-tcmalloc}" == system || "${LD_PRELOAD:-}" == *tcmalloc* ]] && return 0
  local lib="" dir
  for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    [[ -e "$dir/libtcmalloc_minimal.so.4" ]] && { lib="$dir/libtcmalloc_minimal.so.4"; break; }
  done
  if [[ -z "$lib" && -z "${_MDX_TRIED_APT:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "launch.sh: installing tcmalloc (apt-get install libtcmalloc-minimal4)" >&2
    _MDX_TRIED_APT=1
    { apt-get install -y -q libtcmalloc-minimal4 \
      || { apt-get update -q && apt-get install -y -q libtcmalloc-minimal4; }; } >/dev/null 2>&1 || true
    use_tcmalloc; return 0
  fi
  if [[ -z "$lib" ]]; then
    echo "launch.sh: tcmalloc not found (Debian/Ubuntu: apt-get install libtcmalloc-minimal4); CPU steps run ~1.2x slower with glibc's malloc" >&2
    return 0
  fi
  export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
  export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776  # no line per allocation over 1 GB
}

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cmd="${1:-}"; [[ -n "$cmd" ]] || usage; shift
case "$cmd" in
  demo)
    setup
    workdir="runs/demo"
    if [[ $# -gt 0 && "$1" != --* ]]; then workdir="$1"; shift; fi
    exec python -m mdx main --config=experiments/cxr_phantoms.py --workdir="$workdir" --mode=train "$@" ;;
  setup)
    setup "${1:-}" ;;
  bench)
    [[ $# -ge 1 ]] || usage
    setup bench
    what="$1"; shift
    case "$what" in
      densenet) exec python benchmarks/classifiers.py --models=densenet121 --torch "$@" ;;
      unet3d) exec python benchmarks/unet3d.py "$@" ;;
      predict) exec python benchmarks/predict.py "$@" ;;
      checkpoint) exec python benchmarks/checkpoint.py "$@" ;;
      *) usage ;;
    esac ;;
  test)
    # The fast tier (under 3 minutes on 2 cores); --all adds the full tier (tests marked slow:
    # training, subprocesses, several processes), as CI runs it.
    setup test
    tier=(-m "not slow")
    if [[ "${1:-}" == --all ]]; then tier=(); shift; fi
    # loadgroup: the tests sharing a costly module fixture (xdist_group) run on one worker, which
    # builds it once, instead of once per worker
    exec python -m pytest -n 2 --dist loadgroup --durations=15 "${tier[@]}" "$@" ;;
  lint)
    setup test
    ruff check . && ruff format --check . ;;
  train|eval|export)
    [[ $# -ge 1 ]] || usage
    setup
    config="$1"; shift
    exec python -m mdx main --config="$config" --mode="$cmd" "$@" ;;
  prepare|check)
    [[ $# -ge 1 ]] || usage
    setup
    config="$1"; shift
    exec python -m mdx "$cmd" --config="$config" "$@" ;;
  sweep|crossval)
    # the ablation (or experiment) file is the config: --config.FIELD=VALUE overrides its base
    [[ $# -ge 1 ]] || usage
    setup
    ablation="$1"; shift
    exec python -m mdx "$cmd" --config="$ablation" "$@" ;;
  main|predict|evaluate|split|audit|consensus|import_weights|from_weights|findings|card|generalisation|fingerprint)
    setup
    exec python -m mdx "$cmd" "$@" ;;
  export-model)
    # jax2onnx, onnx, onnxruntime: the export extra, which the test extra includes
    if installed_with test; then setup test; else setup export; fi
    exec python -m mdx export_model "$@" ;;
  local)
    # N processes, each with MDX_LOCAL_DEVICES (default 2) fake CPU devices, joined through a
    # coordinator on a free local port: the multi-host code path of a pod, on this machine.
    [[ $# -ge 2 && "$1" =~ ^[0-9]+$ ]] || usage
    setup
    n="$1"; shift
    exec python -m mdx local "$n" ./launch.sh "$@" ;;
  tpu)
    [[ $# -ge 3 ]] || usage
    name="$1"; zone="$2"; shift 2
    # Copy this checkout to every worker, then run the same launch.sh command on all of them at once.
    # Each worker installs mdx with the TPU extra (libtpu), requires the TPU, and joins the pod
    # (MDX_JAX_DISTRIBUTED=1: jax.distributed.initialize() finds the workers itself).
    command -v gcloud >/dev/null 2>&1 || {
      echo "error: ./launch.sh tpu needs the gcloud CLI (install the Google Cloud SDK and run 'gcloud auth login'), or run ./launch.sh $* on each worker yourself" >&2
      exit 2; }
    tmp="$(mktemp -d)"; tarball="$tmp/mdx.tar.gz"
    trap 'rm -rf "$tmp"' EXIT
    git ls-files -z | tar --null -czf "$tarball" -T -
    gcloud compute tpus tpu-vm scp "$tarball" "$name:~/mdx.tar.gz" --zone="$zone" --worker=all
    rm -rf "$tmp"; trap - EXIT
    remote="mkdir -p ~/mdx && tar -xzf ~/mdx.tar.gz -C ~/mdx && cd ~/mdx && MDX_ACCELERATOR=tpu MDX_JAX_DISTRIBUTED=1 ./launch.sh"
    args=""; for a in "$@"; do args+=" $(printf '%q' "$a")"; done
    exec gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
      --command="$remote$args" ;;
  *) usage ;;
esac
