#!/usr/bin/env bash
# Start the same command on every worker of a Cloud TPU VM (single host or pod slice).
# The program calls jax.distributed.initialize() itself; on TPU VMs it needs no arguments.
set -euo pipefail
# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --project=P --zone=Z --tpu=NAME [options] --config=CFG --workdir=DIR [-- ARGS...]
       launch/tpu_pod.sh --project=P --zone=Z --tpu=NAME [options] --command="CMD"

Runs `python3 -m molmo_jax.cli.train --config=CFG --workdir=DIR ARGS...` (or CMD) in REPO_DIR on all
workers at once, through `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`.

Required:
  --project=P          Google Cloud project
  --zone=Z             zone of the TPU VM, e.g. us-central2-b
  --tpu=NAME           TPU VM name
  --config=CFG --workdir=DIR  (or --command=CMD)   what to run; DIR should be gs://... on a pod

Options:
  --create             create the TPU VM first (needs --accelerator)
  --accelerator=TYPE   accelerator type for --create, e.g. v4-32, v5p-64, v5litepod-16, v6e-16
  --version=RUNTIME    TPU software version for --create (default from the accelerator:
                       v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
                       v2-v4 tpu-ubuntu2204-base)
  --spot               create a Spot TPU VM
  --repo_dir=DIR       checkout of this repository on the workers (default ~/molmo-jax)
  --setup=CMD          run CMD in REPO_DIR on all workers before the main command,
                       e.g. "git pull && pip install -e '.[tpu]'"
  --env=KEY=VALUE      export on every worker before the command (repeatable)
  --python=PY          interpreter on the workers (default python3)
  --log=FILE           run detached (nohup) and write each worker's output to FILE on that worker;
                       default: run attached, output streamed here
  --dry_run            print the gcloud commands instead of running them
  -h, --help           this text

Example:
  launch/tpu_pod.sh --project=my-proj --zone=us-central2-b --tpu=molmo-v4-64 --create --accelerator=v4-64 \
      --config=configs/stage1_caption.py:molmo_7b_d --workdir=gs://my-bucket/runs/stage1 -- --config.train.lr=1e-4
EOF
}

PROJECT="" ZONE="" TPU="" ACCELERATOR="" RUNTIME="" CONFIG="" WORKDIR="" COMMAND="" SETUP="" LOG=""
# shellcheck disable=SC2088  # ~ is expanded by the shell on the workers
REPO_DIR="~/molmo-jax" PYTHON="python3" CREATE=0 SPOT=0 DRY_RUN=0
ENVS=() EXTRA=()

VALUE_OPTIONS=" --project --zone --tpu --accelerator --version --config --workdir --command --setup --repo_dir --env --python --log "

set_option() {
  case "$1" in
    --project) PROJECT=$2 ;;
    --zone) ZONE=$2 ;;
    --tpu) TPU=$2 ;;
    --accelerator) ACCELERATOR=$2 ;;
    --version) RUNTIME=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --command) COMMAND=$2 ;;
    --setup) SETUP=$2 ;;
    --repo_dir) REPO_DIR=$2 ;;
    --env) ENVS+=("$2") ;;
    --python) PYTHON=$2 ;;
    --log) LOG=$2 ;;
    *) die "unknown option $1" ;;
  esac
}

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --create) CREATE=1; shift ;;
      --spot) SPOT=1; shift ;;
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
  [[ -n $PROJECT ]] || die "--project is required"
  [[ -n $ZONE ]] || die "--zone is required"
  [[ -n $TPU ]] || die "--tpu is required"
  if [[ -n $COMMAND ]]; then
    [[ -z $CONFIG && -z $WORKDIR && ${#EXTRA[@]} == 0 ]] || die "--command excludes --config, --workdir and -- ARGS"
  else
    [[ -n $CONFIG ]] || die "--config is required (or --command)"
    [[ -n $WORKDIR ]] || die "--workdir is required (or --command)"
  fi
  if ((CREATE)); then
    [[ -n $ACCELERATOR ]] || die "--accelerator is required with --create"
    [[ -n $RUNTIME ]] || RUNTIME=$(default_runtime "$ACCELERATOR")
  fi
  local kv
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$kv'"
  done
}

default_runtime() {
  case "$1" in
    v6e*) echo v2-alpha-tpuv6e ;;
    v5p*) echo v2-alpha-tpuv5 ;;
    v5litepod* | v5e*) echo v2-alpha-tpuv5-lite ;;
    v2* | v3* | v4*) echo tpu-ubuntu2204-base ;;
    *) die "no default --version for accelerator '$1'; pass --version" ;;
  esac
}

# remote_script CMD: CMD run in REPO_DIR with the --env exports (REPO_DIR unquoted: ~ expands remotely).
remote_script() {
  local script="cd $REPO_DIR &&" kv
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do
    script+=" export $(quote "$kv") &&"
  done
  echo "$script $1"
}

main_command() {
  local cmd
  if [[ -n $COMMAND ]]; then
    cmd=$COMMAND
  else
    cmd=$(train_command "$PYTHON" "$CONFIG" "$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
  fi
  if [[ -n $LOG ]]; then
    cmd="{ nohup bash -c $(quote "$cmd") > $(quote "$LOG") 2>&1 < /dev/null & }"
  fi
  remote_script "$cmd"
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

main() {
  parse_args "$@"
  check_args
  if ((CREATE)); then
    local spot=()
    if ((SPOT)); then spot=(--spot); fi
    run gcloud compute tpus tpu-vm create "$TPU" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${spot[@]+"${spot[@]}"}
  fi
  if [[ -n $SETUP ]]; then
    ssh_all "$(remote_script "$SETUP")"
  fi
  ssh_all "$(main_command)"
}

main "$@"
