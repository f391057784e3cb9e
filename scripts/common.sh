# Shared by the launch scripts (sourced, not run): error helper, path helper and the
# split of "POSITIONAL ... --key=value ..." arguments. Expects USAGE to be set.

die() { echo "error: $*" >&2; exit 2; }
abs_path() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }

# split_args MIN MAX "$@": positional arguments into POSITIONAL, everything from the first
# --key=value on into OVERRIDES (passed to the .py untouched); prints USAGE on a bad count.
split_args() {
  local min="$1" max="$2"; shift 2
  POSITIONAL=(); OVERRIDES=()
  local arg
  for arg in "$@"; do
    if [[ "$arg" == --* || ${#OVERRIDES[@]} -gt 0 ]]; then OVERRIDES+=("$arg"); else POSITIONAL+=("$arg"); fi
  done
  if [[ ${#POSITIONAL[@]} -lt $min || ${#POSITIONAL[@]} -gt $max ]]; then
    echo "$USAGE" >&2; exit 2
  fi
}

# resolve_python: PYTHON (default: python on PATH) as an absolute interpreter path.
resolve_python() {
  PYTHON="${PYTHON:-python}"
  command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON=/path/to/python)"
  PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)')"
}

# bind_core: BIND_CORE (default 1: each process pinned to its share of this machine's CPU
# cores, as the MindSpore zoo's launchers do; 0: off) as 1 or 0; True/False are accepted too.
bind_core() {
  case "${BIND_CORE:-1}" in
    1|True|true) echo 1 ;;
    0|False|false) echo 0 ;;
    *) die "BIND_CORE must be 1 (pin each process to its share of CPU cores) or 0 (off), got '$BIND_CORE'" ;;
  esac
}
