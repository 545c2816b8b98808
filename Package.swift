// swift-tools-version: 6.1
import PackageDescription

let package = Package(
  name: "HeteroKV",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "HeteroKVCore", targets: ["HeteroKVCore"]),
    .library(name: "HeteroKVEval", targets: ["HeteroKVEval"]),
    .library(name: "HeteroKVWire", targets: ["HeteroKVWire"]),
    .library(name: "HeteroKVTransport", targets: ["HeteroKVTransport"]),
    .library(name: "HeteroKVMemoryNode", targets: ["HeteroKVMemoryNode"]),
    .library(name: "HeteroKVMemoryClient", targets: ["HeteroKVMemoryClient"]),
    .library(name: "HeteroKVSettings", targets: ["HeteroKVSettings"]),
    .library(name: "HeteroKVConfig", targets: ["HeteroKVConfig"]),
    .library(name: "HeteroKVControlPlane", targets: ["HeteroKVControlPlane"]),
    .library(name: "HeteroKVCoordinator", targets: ["HeteroKVCoordinator"]),
    .library(name: "HeteroKVEtcd", targets: ["HeteroKVEtcd"]),
    .library(name: "HeteroKVCoordinatorClient", targets: ["HeteroKVCoordinatorClient"]),
    .library(name: "HeteroKVEngineClient", targets: ["HeteroKVEngineClient"]),
    .library(name: "HeteroKVWorker", targets: ["HeteroKVWorker"]),
    .library(name: "HeteroKVLocalCluster", targets: ["HeteroKVLocalCluster"]),
    .library(name: "HeteroKVModel", targets: ["HeteroKVModel"]),
    .executable(name: "hkv", targets: ["hkv"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    // `swift package generate-documentation` for the DocC catalogs; no target links it.
    .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
  ],
  targets: [
    // Hot loops (scans, lookup-table scoring, fp16 conversion, CRC32C) with an AVX2/FMA/F16C
    // (or SSE4.2) variant chosen at run time and a portable fallback; no unsafe flags (SwiftPM
    // refuses them in a package resolved by version), so debug builds run these loops at -O0:
    // the test suite runs in release (README).
    .target(name: "CHeteroKVKernels"),
    // librdmacm's rsockets and libibverbs' device list, for the RDMA data-plane transport,
    // loaded at run time (dlopen): the build needs no RDMA headers or libraries.
    .target(
      name: "CRDMA",
      linkerSettings: [.linkedLibrary("dl")]
    ),
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
    // What crosses the wire between roles: the framed data-plane protocol (frames, messages,
    // errors) and the protobuf/gRPC code generated from Proto/.
    .target(
      name: "HeteroKVWire",
      dependencies: [
        "CHeteroKVKernels",
        "HeteroKVCore",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      exclude: ["Generated/README.md"]
    ),
    // Carriers of the data-plane protocol: TCP on SwiftNIO and rsockets over librdmacm, each
    // with a server and a pipelined client connection.
    .target(
      name: "HeteroKVTransport",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "CRDMA",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    // The typed settings of every role (coordinator, memory nodes, worker, budgets, security)
    // as plain values: what the roles take, whoever read them. No YAML.
    .target(
      name: "HeteroKVSettings",
      dependencies: ["HeteroKVCore", "HeteroKVWire"]
    ),
    // The cluster file: YAML read into the typed settings, every problem reported with its line.
    .target(
      name: "HeteroKVConfig",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVSettings",
        .product(name: "Yams", package: "Yams"),
      ]
    ),
    // How gRPC control planes are secured and reached: the shared token on both sides, TLS
    // for servers and clients, and the client connection every role's client uses.
    .target(
      name: "HeteroKVControlPlane",
      dependencies: [
        "HeteroKVWire",
        "HeteroKVSettings",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
      ]
    ),
    // Plumbing every daemon shares: the Prometheus endpoint, health and readiness, and gRPC
    // servers as services. No client code, no file reading.
    .target(
      name: "HeteroKVDaemon",
      dependencies: [
        "HeteroKVControlPlane",
        "HeteroKVSettings",
        "HeteroKVWire",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // The memory-node role: page pool, shard store, near-data attention, its data-plane
    // handler, gRPC control service and the daemon service that runs them.
    .target(
      name: "HeteroKVMemoryNode",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVTransport",
        "HeteroKVDaemon",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // The client of the memory tier that workers use: pooled, pipelined connections per
    // node, fan-out of a step's requests, deadlines and typed errors.
    .target(
      name: "HeteroKVMemoryClient",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVTransport",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    // A client of etcd's v3 API (KV, transactions, leases with keep-alive streams, watches)
    // over grpc-swift-2, from the subset of etcd's protos in Proto/etcd.
    .target(
      name: "HeteroKVEtcd",
      dependencies: [
        "HeteroKVCore",
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
      ]
    ),
    // The coordinator role: leases, per-sequence placement by rendezvous hashing, budgets from
    // head profiles, state persisted behind a store protocol, and its gRPC service.
    .target(
      name: "HeteroKVCoordinator",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVSettings",
        "HeteroKVDaemon",
        "HeteroKVControlPlane",
        "HeteroKVEtcd",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // How members and the admin CLI talk to the coordinator: a client with deadlines and
    // clear errors, and the agent that keeps a member's lease.
    .target(
      name: "HeteroKVCoordinatorClient",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVDaemon",
        "HeteroKVControlPlane",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // What an inference engine links to call a worker: the engine API's client over gRPC, its
    // value types (sequence refs, attention results, errors) and the engine protocol that the
    // worker library also implements. No worker code.
    .target(
      name: "HeteroKVEngineClient",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVControlPlane",
        "HeteroKVSettings",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
      ]
    ),
    // The worker role: key codes and compressed caches per sequence, rows shipped to the
    // memory tier, decode steps answered from resident caches and near-data attention; the
    // engine API as a library, a gRPC service and its client.
    .target(
      name: "HeteroKVWorker",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVSettings",
        "HeteroKVDaemon",
        "HeteroKVMemoryClient",
        "HeteroKVCoordinatorClient",
        "HeteroKVEngineClient",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // A whole cluster in one process on loopback (coordinator, memory nodes, worker), for
    // `hkv demo` and the end-to-end tests.
    .target(
      name: "HeteroKVLocalCluster",
      dependencies: [
        "HeteroKVCore", "HeteroKVWire", "HeteroKVConfig", "HeteroKVDaemon", "HeteroKVCoordinator",
        "HeteroKVCoordinatorClient", "HeteroKVMemoryNode", "HeteroKVWorker", "HeteroKVModel",
        "HeteroKVEval", "HeteroKVMemoryClient",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // A real model on the cache: the GGUF reader, the byte-level BPE tokenizer and a Llama
    // forward pass whose attention goes through a cache protocol.
    .target(
      name: "HeteroKVModel",
      dependencies: ["HeteroKVCore", "CHeteroKVKernels"]
    ),
    .executableTarget(
      name: "hkv",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVEval",
        "HeteroKVWire",
        "HeteroKVMemoryNode",
        "HeteroKVDaemon",
        "HeteroKVConfig",
        "HeteroKVCoordinator",
        "HeteroKVCoordinatorClient",
        "HeteroKVWorker",
        "HeteroKVMemoryClient",
        "HeteroKVLocalCluster",
        "HeteroKVModel",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
      ]
    ),
    // What the role tests share: `hkv` as a child process, a silent logger.
    .target(
      name: "HeteroKVTestSupport",
      dependencies: [
        "HeteroKVWire", "HeteroKVEtcd", "HeteroKVCore",
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Tests/HeteroKVTestSupport"
    ),
    .testTarget(name: "HeteroKVCoreTests", dependencies: ["HeteroKVCore", "CHeteroKVKernels"]),
    .testTarget(name: "HeteroKVEvalTests", dependencies: ["HeteroKVEval", "HeteroKVCore"]),
    .testTarget(
      name: "HeteroKVWireTests",
      dependencies: [
        "HeteroKVWire", "CHeteroKVKernels", .product(name: "NIOCore", package: "swift-nio"),
      ]
    ),
    .testTarget(
      name: "HeteroKVCoordinatorTests",
      dependencies: [
        "HeteroKVCoordinator", "HeteroKVCoordinatorClient", "HeteroKVConfig", "HeteroKVCore",
        "HeteroKVDaemon", "HeteroKVWire", "HeteroKVTestSupport", "HeteroKVEtcd",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    .testTarget(
      name: "HeteroKVEtcdTests",
      dependencies: ["HeteroKVEtcd", "HeteroKVCore", "HeteroKVTestSupport"]
    ),
    .testTarget(
      name: "HeteroKVWorkerTests",
      dependencies: [
        "HeteroKVWorker", "HeteroKVLocalCluster", "HeteroKVCore", "HeteroKVConfig", "HeteroKVWire",
        "HeteroKVEval",
        "HeteroKVCoordinator",
        "HeteroKVTestSupport", "HeteroKVMemoryClient", "HeteroKVTransport",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "MetricsTestKit", package: "swift-metrics"),
      ]
    ),
    .testTarget(
      name: "HeteroKVModelTests",
      dependencies: [
        "HeteroKVModel", "HeteroKVLocalCluster", "HeteroKVWorker", "HeteroKVConfig",
        "HeteroKVCore", "HeteroKVTestSupport", "HeteroKVEval",
      ],
      resources: [.copy("Fixtures")]
    ),
    .testTarget(
      name: "HeteroKVConfigTests",
      dependencies: [
        "HeteroKVCore", "HeteroKVConfig", "HeteroKVWire",
      ]
    ),
    .testTarget(
      name: "HeteroKVMemoryNodeTests",
      dependencies: [
        "HeteroKVCore",
        "HeteroKVWire",
        "HeteroKVTransport",
        "HeteroKVMemoryNode",
        "HeteroKVMemoryClient",
        "HeteroKVDaemon",
        "HeteroKVTestSupport",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
  ],
  swiftLanguageModes: [.v6]
)
