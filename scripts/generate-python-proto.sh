#!/usr/bin/env bash
# Regenerates the Python protobuf and gRPC code for the engine API (Proto/heterokv/v1) into
# python/src/heterokv/v1, the package `heterokv.v1` (protoc's imports of `heterokv.v1.X_pb2`
# then resolve inside the `heterokv` package). The output is committed: CI never runs this.
#
#   scripts/generate-python-proto.sh           regenerate
#   scripts/generate-python-proto.sh --check   regenerate into a temporary folder and fail if
#                                              the committed files differ
#
# Needs grpcio-tools (PyPI) in the interpreter $PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT=python/src
if [[ "${1:-}" == "--check" ]]; then
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT/heterokv/v1"
"$PYTHON" -m grpc_tools.protoc -IProto \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  Proto/heterokv/v1/common.proto Proto/heterokv/v1/coordinator.proto \
  Proto/heterokv/v1/engine.proto
cat > "$OUT/heterokv/v1/__init__.py" <<'PY'
"""Generated protobuf and gRPC code of HeteroKV's wire API (scripts/generate-python-proto.sh)."""
PY
if [[ "${1:-}" == "--check" ]]; then
  for f in "$OUT"/heterokv/v1/*; do
    name="heterokv/v1/$(basename "$f")"
    if ! cmp -s "$f" "python/src/$name"; then
      echo "python/src/$name differs from what the protos generate: run scripts/generate-python-proto.sh" >&2
      exit 1
    fi
  done
  echo "generated Python code is up to date"
fi
