#!/usr/bin/env bash
# The one command a person types. Creates .venv from pyproject.toml when missing or stale.
#   ./launch.sh demo [WORKDIR] [flags]             default experiment end to end; prints where the report is
#   ./launch.sh test [pytest args]                 the test suite
#   ./launch.sh lint                               ruff check and ruff format --check (as CI runs them)
#   ./launch.sh train CONFIG --workdir=DIR [flags] train (resumes if DIR has checkpoints), then report
#   ./launch.sh eval CONFIG --workdir=DIR [flags]  report and bundle from the best checkpoint of DIR
#   ./launch.sh export CONFIG --workdir=DIR --step=N [--output=BUNDLE]   a bundle of any kept step
#   ./launch.sh predict --bundle=DIR --input=IN --output=OUT [flags]   a bundle on new files
#   ./launch.sh prepare CONFIG [flags]             build the TFDS/ArrayRecord records of a real dataset
#   ./launch.sh sweep ABLATION --workdir=DIR [flags]   every variant of an ablation, one results table
#   ./launch.sh local N <command> ...              the command as N joined processes on this machine
#   ./launch.sh tpu NAME ZONE <command> ...        the same command on every worker of a Cloud TPU VM
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MDX_VENV:-.venv}"

# setup [EXTRA]: the package (and an extra of pyproject.toml, e.g. test) into $VENV, again whenever
# pyproject.toml is newer than the last install.
setup() {
  local target="." stamp="$VENV/.mdx-installed"
  if [[ -n "${1:-}" ]]; then target=".[$1]"; stamp="$VENV/.mdx-installed-$1"; fi
  if [[ ! -x "$VENV/bin/python" || pyproject.toml -nt "$stamp" ]]; then
    echo "launch.sh: installing mdx$([[ -n "${1:-}" ]] && echo " with [$1]") into $VENV (first run takes a few minutes)" >&2
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$target"
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cmd="${1:-}"; [[ -n "$cmd" ]] || usage; shift
case "$cmd" in
  demo)
    setup
    workdir="runs/demo"
    if [[ $# -gt 0 && "$1" != --* ]]; then workdir="$1"; shift; fi
    exec python -m mdx.main --config=experiments/cxr_phantoms.py --workdir="$workdir" --mode=train "$@" ;;
  test)
    setup test
    exec python -m pytest -n 2 "$@" ;;
  lint)
    setup test
    ruff check . && ruff format --check . ;;
  train|eval|export)
    [[ $# -ge 1 ]] || usage
    setup
    config="$1"; shift
    exec python -m mdx.main --config="$config" --mode="$cmd" "$@" ;;
  predict)
    setup
    exec python -m mdx.predict "$@" ;;
  prepare)
    [[ $# -ge 1 ]] || usage
    setup
    config="$1"; shift
    exec python -m mdx.data.cli.prepare --config="$config" "$@" ;;
  sweep)
    [[ $# -ge 1 ]] || usage
    setup
    ablation="$1"; shift
    exec python -m mdx.train.sweep --ablation="$ablation" "$@" ;;
  local)
    # N processes, each with MDX_LOCAL_DEVICES (default 2) fake CPU devices, joined through a
    # coordinator on a free local port: the multi-host code path of a pod, on this machine.
    [[ $# -ge 2 && "$1" =~ ^[0-9]+$ ]] || usage
    setup
    n="$1"; shift
    exec python -m mdx.local "$n" ./launch.sh "$@" ;;
  tpu)
    [[ $# -ge 3 ]] || usage
    name="$1"; zone="$2"; shift 2
    # Copy this checkout to every worker, then run the same launch.sh command on all of them at once;
    # --jax_distributed makes each process join the pod (jax.distributed.initialize()).
    tarball="$(mktemp -d)/mdx.tar.gz"
    git ls-files -z | tar --null -czf "$tarball" -T -
    gcloud compute tpus tpu-vm scp "$tarball" "$name:~/mdx.tar.gz" --zone="$zone" --worker=all
    remote="mkdir -p ~/mdx && tar -xzf ~/mdx.tar.gz -C ~/mdx && cd ~/mdx && ./launch.sh"
    args=""; for a in "$@"; do args+=" $(printf '%q' "$a")"; done
    extra=""; [[ "$1" == train || "$1" == eval || "$1" == export || "$1" == predict ]] && extra=" --jax_distributed"
    exec gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
      --command="$remote$args$extra" ;;
  *) usage ;;
esac
