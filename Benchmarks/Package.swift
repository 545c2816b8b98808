// swift-tools-version: 6.1
import PackageDescription

// Benchmarks live in their own package (as swift-nio does it) so the main build stays lean.
// Run: swift run -c release --package-path Benchmarks hkv-bench [--quick]
let package = Package(
  name: "HeteroKVBenchmarks",
  platforms: [.macOS(.v15)],
  dependencies: [.package(name: "HeteroKV", path: "../")],
  targets: [
    .executableTarget(
      name: "hkv-bench",
      dependencies: [
        .product(name: "HeteroKVCore", package: "HeteroKV")
      ]
    )
  ],
  swiftLanguageModes: [.v6]
)
