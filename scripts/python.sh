# Sourced by the scripts in this folder (not run): sets PYTHON to the interpreter PANNs was installed
# into, so a script never runs a python3 from PATH that lacks torch (a raw ModuleNotFoundError far
# into the run). In order: $PYTHON as given; the active virtual environment's python
# ($VIRTUAL_ENV, or $CONDA_PREFIX); a .venv/ or venv/ in the repository; python3 if it imports
# torch. A PYTHON that is not there or cannot import torch, or none found: one line says what to do,
# and the script stops (exit 1).

# Whether python $1 has torch installed: found, not imported (an import takes ~2 s, and every script probes).
panns_has_torch() {
  "$1" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" >/dev/null 2>&1
}
panns_find_python() {
  local root="$1" cand
  if [ -n "${PYTHON:-}" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
      echo "error: PYTHON=$PYTHON is not an executable; set PYTHON to the python PANNs is installed into" >&2
      return 1
    fi
    if ! panns_has_torch "$PYTHON"; then   # else a ModuleNotFoundError traceback later
      echo "error: PYTHON=$PYTHON cannot import torch; set PYTHON to the python PANNs is installed into" >&2
      return 1
    fi
    return 0
  fi
  for cand in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}" \
              "$root/.venv/bin/python" "$root/venv/bin/python" python3; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    if panns_has_torch "$cand"; then
      PYTHON="$cand"
      return 0
    fi
  done
  echo "error: no python with torch found (tried \$VIRTUAL_ENV, \$CONDA_PREFIX, $root/.venv, $root/venv, python3);" \
       "activate the environment you installed into (source <venv>/bin/activate) or set PYTHON=/path/to/python" >&2
  return 1
}
panns_find_python "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || exit 1
export PYTHON
