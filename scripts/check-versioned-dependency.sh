#!/usr/bin/env bash
# Checks that HeteroKV can be a versioned SwiftPM dependency: a throwaway package depends on
# this checkout through a version tag (SwiftPM refuses, at graph loading, a package resolved by
# version whose targets carry unsafe flags) and builds a target that imports HeteroKVCore.
# The engine client's product is in the graph too, so every target it needs is checked.
#
#   scripts/check-versioned-dependency.sh    (from anywhere in the checkout; ~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# This checkout's committed tree plus its working changes, as a repository with a tag.
git clone -q "$ROOT" "$WORK/heterokv"
# Only the tag made below may resolve (not one of the repository's own).
git -C "$WORK/heterokv" tag -l | xargs -r git -C "$WORK/heterokv" tag -d >/dev/null
(cd "$ROOT" && git diff HEAD --binary) > "$WORK/changes.patch"
if [[ -s "$WORK/changes.patch" ]]; then
  git -C "$WORK/heterokv" apply "$WORK/changes.patch"
fi
(cd "$ROOT" && git ls-files --others --exclude-standard -z) \
  | (cd "$ROOT" && xargs -0 -r cp --parents -t "$WORK/heterokv")
git -C "$WORK/heterokv" add -A
git -C "$WORK/heterokv" -c user.name=ci -c user.email=ci@localhost commit -q --allow-empty -m "as checked"
git -C "$WORK/heterokv" tag 1.0.0

mkdir -p "$WORK/consumer/Sources/CoreProbe" "$WORK/consumer/Sources/EngineProbe"
cat > "$WORK/consumer/Package.swift" <<PKG
// swift-tools-version: 6.1
import PackageDescription
let package = Package(
  name: "consumer",
  platforms: [.macOS(.v15)],
  dependencies: [.package(url: "file://$WORK/heterokv", exact: "1.0.0")],
  targets: [
    .executableTarget(
      name: "CoreProbe", dependencies: [.product(name: "HeteroKVCore", package: "heterokv")]),
    .target(
      name: "EngineProbe",
      dependencies: [.product(name: "HeteroKVEngineClient", package: "heterokv")]),
  ]
)
PKG
cat > "$WORK/consumer/Sources/CoreProbe/main.swift" <<'SWIFT'
import HeteroKVCore

// A dependency resolved by version builds and runs: one tau-mass selection.
let kept = try TauMassSelection.select(scores: [4, 3, 0, -2], tau: 0.9)
precondition(!kept.indices.isEmpty)
print("HeteroKV as a versioned dependency: kept \(kept.indices.count) of 4 tokens")
SWIFT
echo "public let probe = 1" > "$WORK/consumer/Sources/EngineProbe/Probe.swift"
cd "$WORK/consumer"
swift build --product CoreProbe 2>&1 | tail -5
swift run --skip-build CoreProbe
