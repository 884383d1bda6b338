#!/bin/sh
# Build the lambda-otel Lambda layer zip (see docs/layer.md), one per Python and arch.
#
#   ./build_layer.sh [--arch x86_64|arm64|all[,...]] [--python X.Y|all[,...]] [--python-bin PATH]...
#                    [--out DIR] [--pip-cache DIR] [--constraints FILE] [--source DIR]
#
# Several versions or arches (comma lists, "all" = 3.12,3.13,3.14 / x86_64,arm64) build one zip each,
# lambda-otel-layer-pythonX.Y-ARCH.zip; each needs a Python X.Y interpreter (found on PATH, in pyenv or
# given with --python-bin, which may be repeated: its version says which target it is for).
#
# Why it looks like this:
# - Dependencies are installed with pip's cross-platform options (--platform manylinux2014_*,
#   --only-binary=:all:, --python-version, --implementation cp), so every compiled module comes from
#   the *target's* wheels (protobuf's upb .so, charset_normalizer's mypyc .so), never from this machine.
# - /opt is read-only on Lambda, so Python cannot cache bytecode there: we ship .pyc compiled by the
#   target version's interpreter (right cache tag), as unchecked-hash pycs (valid whatever the mtimes
#   after unzip, and deterministic).
# - The zip is written by a small Python script with sorted entries, fixed timestamps and fixed
#   permissions, so the same inputs give a byte-identical zip.
set -eu

NAME=lambda-otel                      # extension name == launcher file name == code folder name
ROOT_DIR=$(cd "$(dirname "$0")" && pwd)

die() { echo "build_layer.sh: error: $*" >&2; exit 1; }
usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

ALL_PYTHONS="3.12,3.13,3.14"   # Lambda's current Python runtimes
ALL_ARCHS="x86_64,arm64"
ARCH=""; PYVER=""; PYBIN=""; PYBINS=""; OUT="$ROOT_DIR/layer-out"; PIP_CACHE=""; CONSTRAINTS=""; SRC_DIR=$ROOT_DIR
COMMON=""  # the options every single build gets when several are asked for
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || die "--arch needs a value"; ARCH=${ARCH:+$ARCH,}$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a value"; PYVER=${PYVER:+$PYVER,}$2; shift 2 ;;
        --python-bin) [ $# -ge 2 ] || die "--python-bin needs a value"; PYBIN=$2; PYBINS="$PYBINS
$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --pip-cache) [ $# -ge 2 ] || die "--pip-cache needs a value"; PIP_CACHE=$2; shift 2 ;;
        --constraints) [ $# -ge 2 ] || die "--constraints needs a value"; CONSTRAINTS=$2; shift 2 ;;
        --source) [ $# -ge 2 ] || die "--source needs a value"; SRC_DIR=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "build_layer.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

# Prints "X.Y" if $1 runs and is CPython, nothing otherwise (pyenv shims of inactive versions fail).
py_version_of() {
    "$1" -c 'import sys, platform; platform.python_implementation() == "CPython" and print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

# --- several targets: one build of this script per (Python, arch) ---------------------------------
ARCH=$(echo "$ARCH" | sed "s/all/$ALL_ARCHS/g"); PYVER=$(echo "$PYVER" | sed "s/all/$ALL_PYTHONS/g")
nbins=$(printf '%s' "$PYBINS" | grep -c . || true)
if [ -z "$PYVER" ] && [ "$nbins" -gt 1 ]; then   # versions from the interpreters given
    for b in $PYBINS; do v=$(py_version_of "$b"); [ -n "$v" ] || die "--python-bin '$b' does not run as a CPython interpreter"; PYVER=${PYVER:+$PYVER,}$v; done
fi
case "$ARCH$PYVER" in
*,*)
    for v in $(echo "$PYVER" | tr ',' ' '); do
        bin=""
        for b in $PYBINS; do [ "$(py_version_of "$b")" = "$v" ] && bin=$b; done
        for a in $(echo "${ARCH:-local}" | tr ',' ' '); do
            [ "$a" = local ] && a=""
            set -- --out "$OUT" --source "$SRC_DIR"
            [ -n "$a" ] && set -- "$@" --arch "$a"
            [ -n "$v" ] && set -- "$@" --python "$v"
            [ -n "$bin" ] && set -- "$@" --python-bin "$bin"
            [ -n "$PIP_CACHE" ] && set -- "$@" --pip-cache "$PIP_CACHE"
            [ -n "$CONSTRAINTS" ] && set -- "$@" --constraints "$CONSTRAINTS"
            /bin/sh "$0" "$@" || die "the build for Python ${v:-default} ${a:-local arch} failed"
        done
    done
    exit 0 ;;
esac
[ "$nbins" -le 1 ] || die "several --python-bin for one target (--python $PYVER)"

# --- target architecture -------------------------------------------------------------------------
if [ -z "$ARCH" ]; then
    case "$(uname -m)" in
        x86_64|amd64) ARCH=x86_64 ;;
        aarch64|arm64) ARCH=arm64 ;;
        *) die "cannot map this machine's arch '$(uname -m)' to a Lambda arch; pass --arch x86_64|arm64" ;;
    esac
fi
case "$ARCH" in
    x86_64) PLATFORM=manylinux2014_x86_64 ;;
    arm64|aarch64) ARCH=arm64; PLATFORM=manylinux2014_aarch64 ;;
    *) die "unsupported --arch '$ARCH' (use x86_64 or arm64)" ;;
esac

# --- target Python version and its interpreter ---------------------------------------------------

if [ -n "$PYBIN" ]; then
    got=$(py_version_of "$PYBIN")
    [ -n "$got" ] || die "--python-bin '$PYBIN' does not run as a CPython interpreter"
    [ -n "$PYVER" ] || PYVER=$got
    [ "$got" = "$PYVER" ] || die "--python-bin '$PYBIN' is Python $got, but the target is --python $PYVER"
else
    if [ -z "$PYVER" ]; then
        PYVER=$(py_version_of python3)
        [ -n "$PYVER" ] || die "no working python3 on PATH to take the default version from; pass --python X.Y"
    fi
    case "$PYVER" in 3.[0-9]|3.[0-9][0-9]) ;; *) die "--python must look like 3.12, got '$PYVER'" ;; esac
    pyenv_root=${PYENV_ROOT:-${HOME:-/root}/.pyenv}
    if command -v pyenv >/dev/null 2>&1; then pyenv_root=$(pyenv root 2>/dev/null || echo "$pyenv_root"); fi
    # Candidates, best first: python3.X on PATH, python3 on PATH, pyenv builds (newest patch first), system paths.
    cands="python$PYVER python3"
    for d in $(ls -d "$pyenv_root/versions/$PYVER".* 2>/dev/null | sort -rV); do
        cands="$cands $d/bin/python$PYVER"
    done
    cands="$cands /usr/local/bin/python$PYVER /usr/bin/python$PYVER"
    for c in $cands; do
        if [ "$(py_version_of "$c")" = "$PYVER" ]; then PYBIN=$c; break; fi
    done
    [ -n "$PYBIN" ] || die "no Python $PYVER interpreter found (tried: $cands).
The .pyc files must be compiled by Python $PYVER itself (the cache tag and bytecode are per version).
Install it (e.g. 'pyenv install $PYVER', 'apt-get install python$PYVER') or pass --python-bin /path/to/python$PYVER."
fi
# A command may be a PATH name; resolve it once so every step uses the same interpreter.
case "$PYBIN" in */*) ;; *) PYBIN=$(command -v "$PYBIN") ;; esac
# pyenv shims are shell scripts: ask the interpreter for its real path.
PYBIN=$("$PYBIN" -c 'import sys; print(sys.executable)')
CACHE_TAG=$("$PYBIN" -c 'import sys; print(sys.implementation.cache_tag)')

# pip: the target interpreter's own if it has one, else python3's (the cross-platform options make
# the result independent of which interpreter runs pip).
if "$PYBIN" -m pip --version >/dev/null 2>&1; then PIP_PY=$PYBIN
elif python3 -m pip --version >/dev/null 2>&1; then PIP_PY=$(command -v python3)
else die "no pip: neither $PYBIN nor python3 has the pip module"; fi

echo "build_layer.sh: arch=$ARCH platform=$PLATFORM python=$PYVER ($PYBIN, $CACHE_TAG)"

# --- staging --------------------------------------------------------------------------------------
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ZIP="$OUT/$NAME-layer-python$PYVER-$ARCH.zip"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lambda-otel-layer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
STAGE="$WORK/stage"
CODE="$STAGE/$NAME"
mkdir -p "$STAGE/extensions" "$CODE" "$WORK/src" "$WORK/wheel"

set -- --disable-pip-version-check --no-input
[ -n "$PIP_CACHE" ] && set -- "$@" --cache-dir "$PIP_CACHE"
export PIP_ROOT_USER_ACTION=ignore

# 1. A wheel of this checkout (or of --source DIR, e.g. a frozen copy), built from a clean copy
#    (never from, or into, the working tree: a stale build/ folder would leak deleted modules).
[ -f "$SRC_DIR/setup.cfg" ] || die "--source '$SRC_DIR' is not a lambda-otel project folder (no setup.cfg)"
"$PYBIN" - "$SRC_DIR" "$WORK/src" <<'EOF'
import os, shutil, subprocess, sys
root, dest = sys.argv[1], sys.argv[2]
skip_top = {".git", ".venv", "build", "dist", "tests", "bench", "layer-out", ".ci"}
try:   # tracked files plus untracked ones git does not ignore: what the checkout really holds
    out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    files = [f for f in out.decode().split("\0") if f]
except (OSError, subprocess.CalledProcessError):
    files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
for rel in sorted(set(files)):
    parts = rel.split("/")
    if parts[0] in skip_top or "__pycache__" in parts or parts[0].endswith(".egg-info") or rel.endswith(".pyc"):
        continue
    src = os.path.join(root, rel)
    if not os.path.isfile(src):
        continue   # deleted in the working tree but still tracked
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    shutil.copyfile(src, os.path.join(dest, rel))
EOF
"$PIP_PY" -m pip "$@" wheel -q --no-deps --use-pep517 -w "$WORK/wheel" "$WORK/src" \
    || die "building the lambda-otel wheel failed"
WHEEL=$(ls "$WORK/wheel"/lambda_otel-*.whl)

# 2. The wheel plus its dependencies, for the target platform and Python, without compiling.
set -- "$@" install -q --no-compile --target "$CODE" \
    --platform "$PLATFORM" --only-binary=:all: --python-version "$PYVER" --implementation cp
[ -n "$CONSTRAINTS" ] && set -- "$@" --constraint "$CONSTRAINTS"
"$PIP_PY" -m pip "$@" "$WHEEL" || die "pip could not install the dependencies for $PLATFORM / Python $PYVER"

# 3. Strip what a layer does not need (licence files stay).
rm -rf "$CODE/bin" "$CODE/lambda_otel/local"
rm -rf "$CODE"/pip "$CODE"/pip-* "$CODE"/setuptools "$CODE"/setuptools-* "$CODE"/wheel "$CODE"/wheel-* \
       "$CODE"/_distutils_hack "$CODE"/pkg_resources "$CODE"/distutils-precedence.pth
find "$CODE" -depth -type d \( -name __pycache__ -o -name tests -o -name test -o -name testdata \) \
    -exec rm -rf {} +
find "$CODE" -type f \( -name '*.pyi' -o -name 'py.typed' -o -name '*.pyc' -o -name '*.pyo' \) -exec rm -f {} +
# dist-info: keep METADATA (versions, for audits and importlib.metadata) and the licence files.
# RECORD/INSTALLER/REQUESTED/direct_url.json are pip's bookkeeping (direct_url.json holds a temp path),
# entry_points.txt names console scripts (bin/ is gone; lambda-otel-local is not shipped).
for d in "$CODE"/*.dist-info; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
        b=$(basename "$f")
        case "$b" in
            METADATA|licenses|license_files|LICENSE*|LICENCE*|COPYING*|NOTICE*|AUTHORS*) ;;
            *) rm -rf "$f" ;;
        esac
    done
done
[ -f "$CODE/lambda_otel/layer_bootstrap.py" ] || die "lambda_otel/layer_bootstrap.py is missing from the wheel"
# Every compiled module must be for the target machine (a wrong wheel would only fail on Lambda).
case "$ARCH" in x86_64) EM=62 ;; arm64) EM=183 ;; esac
"$PYBIN" - "$CODE" "$EM" <<'EOF' || die "compiled modules for the wrong architecture (expected $ARCH)"
import os, sys
root, want = sys.argv[1], int(sys.argv[2])
bad = []
for d, _, files in os.walk(root):
    for f in files:
        if f.endswith(".so") or ".so." in f:
            with open(os.path.join(d, f), "rb") as fh:
                head = fh.read(20)
            if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != want:
                bad.append(os.path.relpath(os.path.join(d, f), root))
for b in bad:
    print("build_layer.sh: not an ELF object for this arch: %s" % b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
if find "$STAGE" -type l | grep -q .; then die "unexpected symlinks in the staging tree"; fi

# 4. Bytecode for the target version, compiled by that version (-d: a fixed path in the pycs instead of
#    this temp dir; PYTHONHASHSEED: set/frozenset constants marshalled in a stable order).
PYTHONHASHSEED=0 "$PYBIN" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    -d "/opt/$NAME" "$CODE" >"$WORK/compile.log" 2>&1 \
    || { cat "$WORK/compile.log" >&2; die "compileall with Python $PYVER failed"; }

# 5. The launcher Lambda starts (every executable in /opt/extensions is an extension).
cat >"$STAGE/extensions/$NAME" <<EOF
#!/bin/sh
# lambda-otel extension launcher (generated by build_layer.sh for Python $PYVER, $ARCH).
# Lambda runs every executable in /opt/extensions; the extension must register under this file's
# name. Code and dependencies are in ../$NAME, found relative to this file so any root works.
# -I: ignore PYTHON* variables and the user site (the function's PYTHONPATH must not shadow our
# dependencies); -S: no site-packages; -B: never try to write bytecode (/opt is read-only).
case "\$0" in */*) here=\${0%/*} ;; *) here=. ;; esac
name=\${0##*/}
if ! command -v python3 >/dev/null 2>&1; then
    echo "[\$name] error: no python3 on PATH. This layer runs on the function's Python runtime and was built for python$PYVER; attach it to a python$PYVER function." >&2
    exit 1
fi
LAMBDA_OTEL_EXTENSION_NAME=\$name
export LAMBDA_OTEL_EXTENSION_NAME
exec python3 -I -S -B "\$here/../$NAME/lambda_otel/layer_bootstrap.py" "$PYVER" "\$0"
EOF

# 6. A reproducible zip: sorted entries, fixed time (SOURCE_DATE_EPOCH or 1980-01-02), fixed modes.
"$PYBIN" - "$STAGE" "$ZIP" "extensions/$NAME" <<'EOF'
import hashlib, os, sys, time, zipfile
stage, zip_path, executable = sys.argv[1:4]
epoch = os.environ.get("SOURCE_DATE_EPOCH")
stamp = time.gmtime(max(int(epoch), 315619200))[:6] if epoch else (1980, 1, 2, 0, 0, 0)
entries = []
for d, dirs, files in os.walk(stage):
    rel = os.path.relpath(d, stage).replace(os.sep, "/")
    if rel != ".":
        entries.append((rel + "/", None))
    entries.extend(((f if rel == "." else rel + "/" + f), os.path.join(d, f)) for f in files)
tmp = zip_path + ".tmp"
with zipfile.ZipFile(tmp, "w") as zf:
    for name, path in sorted(entries):
        info = zipfile.ZipInfo(name, date_time=stamp)
        info.create_system = 3   # Unix, so the modes below are honoured by unzip
        if path is None:
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
            continue
        mode = 0o755 if name == executable else 0o644
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as fh:
            zf.writestr(info, fh.read(), compresslevel=9)
os.replace(tmp, zip_path)
unzipped = sum(os.path.getsize(p) for _, p in entries if p)
with open(zip_path, "rb") as fh:
    digest = hashlib.sha256(fh.read()).hexdigest()
print("layer: %s" % zip_path)
print("size: %d bytes zipped, %d bytes unzipped, %d files" % (os.path.getsize(zip_path), unzipped,
                                                              sum(1 for _, p in entries if p)))
print("sha256: %s" % digest)
EOF
