# Sourced by the side-venv builders (setup_verl_venv.sh, setup_trl_venv.sh): a venv beside .venv with its own
# pins, for a peer (verl, TRL) whose dependencies must never move rlreason's. Re-running is cheap: a stamp over
# the builder, this file and the constraint files skips a venv that is already current.
#
#   . scripts/_side_venv.sh
#   side_venv_begin NAME VENV BUILDER CONSTRAINT...   # exits 0 when up to date; else venv + CPU torch
#   pip install -q "${SV_C[@]}" ...                   # the builder's own packages, under the constraints
#   side_venv_finish PACKAGE...                       # refuse version drift, print PACKAGE versions, stamp

pip() { "$SV_VENV/bin/python" -m pip "$@"; }

side_venv_begin() {
  SV_NAME=$1 SV_VENV=$2
  local builder=$3
  shift 3
  SV_CONSTRAINTS=("$@")
  SV_C=()
  local f
  for f in "$@"; do SV_C+=(-c "$f"); done
  SV_STAMP="$SV_VENV/.rlreason-$SV_NAME"
  SV_WANT=$(cat "$builder" scripts/_side_venv.sh "$@" | sha256sum | cut -c1-16)
  if [ -f "$SV_STAMP" ] && [ "$(cat "$SV_STAMP")" = "$SV_WANT" ] && [ -x "$SV_VENV/bin/python" ]; then
    echo "$SV_NAME: up to date ($SV_VENV)"
    exit 0
  fi
  SV_T0=$(date +%s)
  local py=${PYTHON:-python3.11}
  command -v "$py" >/dev/null || py=python3
  [ -x "$SV_VENV/bin/python" ] || "$py" -m venv "$SV_VENV"
  pip install -q --upgrade pip
  # CPU torch first (the local wheel dir, else PyTorch's CPU index), so nothing later pulls the CUDA build.
  pip install -q "${SV_C[@]}" torch 2>/dev/null || \
    pip install -q "${SV_C[@]}" torch --index-url https://download.pytorch.org/whl/cpu
}

side_venv_finish() {
  "$SV_VENV/bin/python" - "$SV_NAME" "${SV_CONSTRAINTS[*]}" "$@" <<'PY'
import importlib.metadata as md
import sys

name, files, show = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
want = {}
for f in files:
    want.update({l.split("==")[0].strip().lower(): l.split("==")[1].strip()
                 for l in open(f) if "==" in l and not l.startswith("#")})
bad = []
for pkg, ver in want.items():
    try:
        have = md.version(pkg)
    except md.PackageNotFoundError:
        continue  # pinned for the other venvs that share the file, not installed here
    if have.split("+")[0] != ver.split("+")[0]:
        bad.append(f"{pkg} {have} (pinned {ver})")
if bad:
    raise SystemExit(f"{name}: version drift: " + ", ".join(bad))
print(f"{name}: " + ", ".join(f"{p} {md.version(p)}" for p in show))
PY
  echo "$SV_WANT" > "$SV_STAMP"
  echo "$SV_NAME: done in $(( $(date +%s) - SV_T0 )) s ($SV_VENV)"
}
