// swift-tools-version: 6.1
import PackageDescription

// The libFuzzer harness of the data-plane decoders, in its own package so that its
// instrumented build (`--sanitize=fuzzer`) stays apart from the main one. Run it with
// scripts/fuzz-wire.sh; the suite replays the committed corpus (Fuzz/Corpus/wire).
let package = Package(
  name: "HeteroKVFuzz",
  platforms: [.macOS(.v15)],
  dependencies: [.package(name: "HeteroKV", path: "../")],
  targets: [
    .executableTarget(
      name: "hkv-fuzz-wire",
      dependencies: [.product(name: "HeteroKVWire", package: "HeteroKV")],
      swiftSettings: [.unsafeFlags(["-parse-as-library"])]
    )
  ],
  swiftLanguageModes: [.v6]
)
