// swift-tools-version: 6.1
import PackageDescription

// Benchmarks live in their own package (as swift-nio does it) so the main build stays lean.
// Run: swift run -c release --package-path Benchmarks hkv-bench [--quick]
//      swift run -c release --package-path Benchmarks hkv-cluster-bench decode | scale --hkv PATH
//      swift run -c release --package-path Benchmarks hkv-bench dataplane [--quick]
//      swift run -c release --package-path Benchmarks hkv-model-bench [--python PATH]
let package = Package(
  name: "HeteroKVBenchmarks",
  platforms: [.macOS(.v15)],
  dependencies: [
    .package(name: "HeteroKV", path: "../"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
  ],
  targets: [
    .target(name: "BenchSupport"),
    .executableTarget(
      name: "hkv-bench",
      dependencies: [
        "BenchSupport",
        .product(name: "HeteroKVCore", package: "HeteroKV"),
        .product(name: "HeteroKVWire", package: "HeteroKV"),
        .product(name: "HeteroKVMemoryClient", package: "HeteroKV"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    .executableTarget(
      name: "hkv-cluster-bench",
      dependencies: [
        "BenchSupport",
        .product(name: "HeteroKVCore", package: "HeteroKV"),
        .product(name: "HeteroKVWire", package: "HeteroKV"),
        .product(name: "HeteroKVConfig", package: "HeteroKV"),
        .product(name: "HeteroKVWorker", package: "HeteroKV"),
        .product(name: "HeteroKVLocalCluster", package: "HeteroKV"),
        .product(name: "HeteroKVCoordinator", package: "HeteroKV"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .executableTarget(
      name: "hkv-model-bench",
      dependencies: [
        .product(name: "HeteroKVCore", package: "HeteroKV"),
        .product(name: "HeteroKVConfig", package: "HeteroKV"),
        .product(name: "HeteroKVWorker", package: "HeteroKV"),
        .product(name: "HeteroKVLocalCluster", package: "HeteroKV"),
        .product(name: "HeteroKVModel", package: "HeteroKV"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
  ],
  swiftLanguageModes: [.v6]
)
