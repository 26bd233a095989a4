#!/usr/bin/env bash
# Run a command on this host with N GPUs: one JAX process sees all the chosen GPUs as its devices.
# Installs nothing; use the environment you already have (e.g. .venv with the `cuda` extra).
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/gpu_local.sh [options] --config=CFG --workdir=DIR [-- ARGS...]
       launch/gpu_local.sh [options] --command="CMD"

Runs `python -m molmo_jax.cli.train --config=CFG --workdir=DIR ARGS...` (or CMD) on this host.

Options:
  --gpus=0,1,2,3       GPUs to use (sets CUDA_VISIBLE_DEVICES)
  --num_gpus=N         use GPUs 0..N-1 (instead of --gpus); default: every visible GPU
  --mem_fraction=F     XLA_PYTHON_CLIENT_MEM_FRACTION, the share of GPU memory JAX preallocates
  --xla_flags="..."    extra XLA_FLAGS, appended to the defaults and to XLA_FLAGS from the environment
  --python=PY          interpreter (default: the repository's .venv/bin/python if present, else python)
  --dry_run            print the command instead of running it
  -h, --help           this text

Default XLA_FLAGS: --xla_gpu_enable_latency_hiding_scheduler=true (overlaps collectives with compute).

Example:
  launch/gpu_local.sh --num_gpus=8 --config=configs/finetune_custom.py:molmo_7b_d --workdir=runs/ft
EOF
}

DEFAULT_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"
CONFIG="" WORKDIR="" COMMAND="" GPUS="" NUM_GPUS="" MEM_FRACTION="" XLA_EXTRA="" PYTHON="" DRY_RUN=0
EXTRA=()
VALUE_OPTIONS=" --config --workdir --command --gpus --num_gpus --mem_fraction --xla_flags --python "

set_option() {
  case "$1" in
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --command) COMMAND=$2 ;;
    --gpus) GPUS=$2 ;;
    --num_gpus) NUM_GPUS=$2 ;;
    --mem_fraction) MEM_FRACTION=$2 ;;
    --xla_flags) XLA_EXTRA=$2 ;;
    --python) PYTHON=$2 ;;
    *) die "unknown option $1" ;;
  esac
}

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      --*=*) set_option "${1%%=*}" "${1#*=}"; shift ;;
      --*)
        [[ $VALUE_OPTIONS == *" $1 "* ]] || die "unknown option $1"
        need_value "$1" $# "${2-}"
        set_option "$1" "$2"
        shift 2
        ;;
      *) die "unexpected argument '$1' (arguments for the program go after --)" ;;
    esac
  done
}

check_args() {
  if [[ -n $COMMAND ]]; then
    [[ -z $CONFIG && -z $WORKDIR && ${#EXTRA[@]} == 0 ]] || die "--command excludes --config, --workdir and -- ARGS"
  else
    [[ -n $CONFIG ]] || die "--config is required (or --command)"
    [[ -n $WORKDIR ]] || die "--workdir is required (or --command)"
  fi
  [[ -z $GPUS || -z $NUM_GPUS ]] || die "give --gpus or --num_gpus, not both"
  [[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus expects a list like 0,1,2,3, got '$GPUS'"
  [[ -z $NUM_GPUS || $NUM_GPUS =~ ^[1-9][0-9]*$ ]] || die "--num_gpus expects a positive integer, got '$NUM_GPUS'"
  [[ -z $MEM_FRACTION || $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] ||
    die "--mem_fraction expects a number in (0, 1], got '$MEM_FRACTION'"
}

# visible_devices: the CUDA_VISIBLE_DEVICES value, empty for "leave as is".
visible_devices() {
  if [[ -n $NUM_GPUS ]]; then
    seq -s, 0 $((NUM_GPUS - 1))
  else
    echo "$GPUS"
  fi
}

environment() {
  local devices flags
  devices=$(visible_devices)
  read -r -a flags <<<"${XLA_FLAGS:-} $DEFAULT_XLA_FLAGS $XLA_EXTRA"
  [[ -z $devices ]] || echo "CUDA_VISIBLE_DEVICES=$devices"
  [[ -z $MEM_FRACTION ]] || echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION"
  echo "XLA_FLAGS=${flags[*]}"
}

main() {
  parse_args "$@"
  check_args
  if [[ -z $PYTHON ]]; then
    if [[ -x $REPO_ROOT/.venv/bin/python ]]; then PYTHON=$REPO_ROOT/.venv/bin/python; else PYTHON=python; fi
  fi
  local env_vars=() line
  while IFS= read -r line; do env_vars+=("$line"); done < <(environment)
  if [[ -n $COMMAND ]]; then
    run env "${env_vars[@]}" bash -c "$COMMAND"
  else
    run env "${env_vars[@]}" "$PYTHON" -m molmo_jax.cli.train "--config=$CONFIG" "--workdir=$WORKDIR" \
      ${EXTRA[@]+"${EXTRA[@]}"}
  fi
}

main "$@"
