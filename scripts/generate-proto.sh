#!/usr/bin/env bash
# Regenerates the Swift code for Proto/ into Sources/HeteroKVWire/Generated.
#
# protoc comes from Debian's protobuf-compiler; the two Swift plugins are built from the
# package versions this repository pins (swift-protobuf, grpc-swift-protobuf), in a scratch
# folder outside the main build. The output is committed: CI never runs this script.
#
#   scripts/generate-proto.sh           regenerate
#   scripts/generate-proto.sh --check   regenerate into a temporary folder and fail if the
#                                       committed files differ
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOBUF_VERSION=1.39.0
GRPC_PROTOBUF_VERSION=2.4.1
SCRATCH="${HKV_PLUGIN_SCRATCH:-$PWD/.build-protoc}"
OUT=Sources/HeteroKVWire/Generated

if ! command -v protoc >/dev/null; then
  echo "protoc not found; installing Debian's protobuf-compiler" >&2
  apt-get update -qq && apt-get install -y -qq protobuf-compiler libprotobuf-dev
fi

# A throwaway package whose only job is to build the plugins at the pinned versions.
mkdir -p "$SCRATCH/plugins"
cat > "$SCRATCH/plugins/Package.swift" <<PKG
// swift-tools-version: 6.1
import PackageDescription
let package = Package(
  name: "plugins",
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf", exact: "$PROTOBUF_VERSION"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", exact: "$GRPC_PROTOBUF_VERSION"),
  ],
  targets: []
)
PKG
(cd "$SCRATCH/plugins" \
  && swift build -c release --product protoc-gen-swift \
  && swift build -c release --product protoc-gen-grpc-swift-2) >&2
BIN="$(cd "$SCRATCH/plugins" && swift build -c release --show-bin-path)"

# Proto/heterokv and Proto/grpc go to the wire module; Proto/etcd (the subset of etcd's v3 API
# the coordinator's etcd store uses) to its own module.
status=0
generate() {
  local out="$1"
  shift
  local target="$out"
  if [[ "$CHECK" == 1 ]]; then
    target="$(mktemp -d)"
  fi
  mkdir -p "$target"
  rm -f "$target"/*.pb.swift "$target"/*.grpc.swift
  protoc \
    --plugin=protoc-gen-swift="$BIN/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift-2="$BIN/protoc-gen-grpc-swift-2" \
    --proto_path=Proto \
    --swift_out="$target" --swift_opt=Visibility=Public,FileNaming=PathToUnderscores \
    --grpc-swift-2_out="$target" \
    --grpc-swift-2_opt=Visibility=Public,FileNaming=PathToUnderscores \
    $(find "$@" -name '*.proto' | sort)
  if [[ "$CHECK" == 1 ]]; then
    if diff -r -x README.md "$out" "$target"; then
      echo "generated code in $out is up to date"
    else
      echo "generated code in $out differs from Proto/: run scripts/generate-proto.sh" >&2
      status=1
    fi
  else
    echo "wrote $(ls "$target" | grep -c swift) files to $target"
  fi
}

CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1
generate "$OUT" Proto/heterokv Proto/grpc
generate Sources/HeteroKVEtcd/Generated Proto/etcd
exit $status
