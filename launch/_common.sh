# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run).

# die MESSAGE: print an error and the usage hint to stderr, exit 2.
die() {
  echo "error: $*" >&2
  echo "run '$(basename "$0") -h' for usage" >&2
  exit 2
}

# quote ARG...: the arguments as one shell-safe line (plain words stay unquoted, for readability).
quote() {
  local out=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./=:,@%+~-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# run CMD...: run the command, or only print it when DRY_RUN=1.
run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "+ $(quote "$@")"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# need_value OPTION ARGC [NEXT]: fail unless OPTION is followed by a value.
need_value() {
  if (($2 < 2)) || [[ $3 == --* ]]; then
    die "$1 needs a value"
  fi
}

# train_command PYTHON CONFIG WORKDIR [EXTRA...]: the training command line, quoted.
train_command() {
  local python=$1 config=$2 workdir=$3
  shift 3
  quote "$python" -m molmo_jax.cli.train "--config=$config" "--workdir=$workdir" "$@"
}
