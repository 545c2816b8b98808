// swift-tools-version: 6.1
import PackageDescription

let package = Package(
  name: "HeteroKV",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "HeteroKVCore", targets: ["HeteroKVCore"]),
    .library(name: "HeteroKVEval", targets: ["HeteroKVEval"]),
    .executable(name: "hkv", targets: ["hkv"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
  ],
  targets: [
    // Hot loops (scans, lookup-table scoring, fp16 conversion) with an AVX2/FMA/F16C
    // variant chosen at run time and a portable fallback; no unsafe flags needed.
    .target(name: "CHeteroKVKernels"),
    // The numeric core: geometry, codecs, attention, HeteroCache, baselines, metrics,
    // workloads. No I/O.
    .target(
      name: "HeteroKVCore",
      dependencies: ["CHeteroKVKernels"]
    ),
    // The fidelity harness: runs policies on a workload or a trace, builds reports.
    .target(
      name: "HeteroKVEval",
      dependencies: ["HeteroKVCore"]
    ),
    .executableTarget(
      name: "hkv",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVEval",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .testTarget(name: "HeteroKVCoreTests", dependencies: ["HeteroKVCore"]),
    .testTarget(name: "HeteroKVEvalTests", dependencies: ["HeteroKVEval", "HeteroKVCore"]),
  ],
  swiftLanguageModes: [.v6]
)
