import BenchSupport
import Dispatch
import Foundation
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire
import NIOCore
import NIOPosix
import Synchronization

// The data plane against a real peer in the same run: an `hkv memnode` process and a
// `redis-server` process on loopback hold the same 1M rows of 128 fp16 values; both serve
// gathers of 2,048 random rows at 1, 8 and 64 requests in flight. Then near-data partial
// attention against gather + local compute, and loopback TCP bandwidth as the physical
// reference.

struct DataPlaneBenchmark {
  let quick: Bool
  let d = 128
  let gatherRows = 2048
  var rows: Int { quick ? 262_144 : 1_048_576 }

  func run() async throws {
    let hkv = try locateHKV()
    let redisPort = try freePort()
    print(
      "## Data plane: hkv memnode vs Redis \(redisVersion()), loopback, \(rows) rows x \(d) fp16\n")
    // Three nodes with the same rows: open (the reference), one that requires a tenant's
    // credential (HMAC handshake per connection, namespace and quota checks per request), and
    // one that serves every request on its event loops (no compute pool).
    let variants = try [
      NodeVariant(name: "hkv", port: freePort(), credential: nil, computeThreads: nil),
      NodeVariant(
        name: "hkv+auth", port: freePort(),
        credential: DataPlaneCredential(tenant: "bench", secret: "bench-tenant-secret"),
        computeThreads: nil),
      NodeVariant(name: "hkv inline", port: freePort(), credential: nil, computeThreads: 0),
    ]
    let securedFile = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-bench-secured-\(ProcessInfo.processInfo.processIdentifier).yaml")
    try """
    cluster: bench
    memory_nodes:
      - id: bench
        data: 127.0.0.1:\(variants[1].port)
        control: 127.0.0.1:0
        capacity: 2GiB
    security:
      token_env: HKV_BENCH_CLUSTER_TOKEN
      tenants:
        - name: bench
          token_env: HKV_BENCH_TENANT_TOKEN
          namespaces: [0]
          quota: 1GiB
    """.write(to: securedFile, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: securedFile) }
    var nodes: [Process] = []
    for variant in variants {
      var arguments = [
        "memnode", "--id", "bench", "--data", "127.0.0.1:\(variant.port)", "--control",
        "127.0.0.1:0", "--metrics", "none", "--capacity", "2GiB", "--log-level", "warning",
        "--coordinator", "none",
      ]
      if variant.credential != nil { arguments += ["--config", securedFile.path] }
      if let threads = variant.computeThreads { arguments += ["--compute-threads", "\(threads)"] }
      nodes.append(
        try spawn(
          hkv, arguments,
          environment: [
            "HKV_BENCH_CLUSTER_TOKEN": "bench-cluster-secret",
            "HKV_BENCH_TENANT_TOKEN": variant.credential?.secret ?? "",
          ]))
    }
    let redis = try spawn(
      URL(fileURLWithPath: "/usr/bin/redis-server"),
      [
        "--port", "\(redisPort)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--loglevel", "warning",
      ])
    defer {
      for process in nodes + [redis] {
        process.terminate()
        process.waitUntilExit()
      }
    }
    for variant in variants { try await waitForPort(variant.port) }
    try await waitForPort(redisPort)
    progress("\(variants.count) nodes and redis listen; loading")

    // The same rows in every node (values, and keys for exact partial attention), one Redis
    // key per row.
    var random = SeededGenerator(seed: 7)
    let shard = ShardID(sequence: 1, layer: 0, kvHead: 0)
    let loaders = variants.map { $0.client(connections: 4) }
    let node0 = loaders[0]
    let redis0 = try await RedisConnection.connect(host: "127.0.0.1", port: redisPort)
    let batch = 8192
    let loadStart = DispatchTime.now().uptimeNanoseconds
    for start in stride(from: 0, to: rows, by: batch) {
      let values = (0..<batch * d).map { _ in Float16(random.signedUnit()) }
      let keys = (0..<batch * d).map { _ in Float16(random.signedUnit()) }
      for loader in loaders {
        _ = try await loader.put(
          PutRequest(
            shard: shard, startToken: UInt32(start), headDim: d, values: values, keys: keys))
      }
      var args = [ByteBuffer(string: "MSET")]
      values.withUnsafeBytes { raw in
        for r in 0..<batch {
          args.append(ByteBuffer(string: "v:\(start + r)"))
          args.append(ByteBuffer(bytes: raw[r * d * 2..<(r + 1) * d * 2]))
        }
      }
      let reply = try await redis0.send(args)
      precondition(reply.error == nil, "redis: \(reply.error!)")
    }
    let loadSeconds = Double(DispatchTime.now().uptimeNanoseconds - loadStart) / 1e9
    print("loaded all in \(String(format: "%.1f", loadSeconds)) s\n")

    // Sanity: both return the same bytes for the same rows.
    let check: [UInt32] = [0, 1, 8191]
    let mine = try await node0.gather(GatherRequest(shard: shard, tokens: check)).values
    let theirs = try await redis0.send(
      ["MGET"].map { ByteBuffer(string: $0) } + check.map { ByteBuffer(string: "v:\($0)") }
    ).data
    precondition(mine == theirs, "the node and Redis disagree on the stored rows")
    for loader in loaders.dropFirst() {
      let same = try await loader.gather(GatherRequest(shard: shard, tokens: check)).values
      precondition(same == mine, "the node variants disagree on the stored rows")
    }
    for loader in loaders { await loader.close() }
    await redis0.close()

    progress("measuring loopback bandwidth")
    let bandwidth = try await loopbackBandwidth()
    print(
      "loopback TCP copy bandwidth (1 stream, in-process): \(String(format: "%.2f", bandwidth / 1e9)) GB/s\n"
    )

    print(
      "### Gather of \(gatherRows) random rows (\(gatherRows * d * 2 / 1024) KiB of values per request)\n"
    )
    print(
      "| in flight | system | requests | rows/s | payload GB/s | share of loopback | p50 | p99 | x redis | x open hkv |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for inFlight in [1, 8, 64] {
      progress("gather at \(inFlight) in flight")
      let requests = quick ? max(64, inFlight * 4) : max(256, inFlight * 16)
      let tokenLists = (0..<requests).map { _ in
        (0..<gatherRows).map { _ in UInt32(random.next() % UInt64(rows)) }
      }
      let connections = min(inFlight, 4)
      let ours = try await interleaved(
        variants, connections: connections, requests: requests, inFlight: inFlight
      ) { client, i in
        let response = try await client.gather(GatherRequest(shard: shard, tokens: tokenLists[i]))
        precondition(response.rowCount == gatherRows)
      }
      var redisConnections: [RedisConnection] = []
      for _ in 0..<connections {
        redisConnections.append(
          try await RedisConnection.connect(host: "127.0.0.1", port: redisPort))
      }
      // Commands encoded before the clock starts, as the node's requests are cheap to encode.
      let keyLists = tokenLists.map {
        RedisConnection.encode(
          [ByteBuffer(string: "MGET")] + $0.map { ByteBuffer(string: "v:\($0)") })
      }
      let pool = redisConnections
      let theirs = try await measure(requests: requests, inFlight: inFlight) { i in
        let reply = try await pool[i % pool.count].send(encoded: keyLists[i])
        precondition(reply.count == gatherRows && reply.nils == 0)
      }
      for c in redisConnections { await c.close() }
      let bytes = Double(gatherRows * d * 2)
      let reference = ours[0].1
      for (name, m) in ours + [("redis", theirs)] {
        let rps = Double(requests) / m.seconds
        let ratio =
          name == "redis"
          ? "" : String(format: "%.2fx", theirs.seconds / m.seconds)
        let relative =
          name == "hkv" || name == "redis"
          ? "" : String(format: "%.3f", reference.seconds / m.seconds)
        print(
          "| \(inFlight) | \(name) | \(requests) | \(Int(rps * Double(gatherRows))) | \(String(format: "%.2f", rps * bytes / 1e9)) | \(String(format: "%.2f", rps * bytes / bandwidth)) | \(ms(m.p50)) | \(ms(m.p99)) | \(ratio) | \(relative) |"
        )
      }
    }

    // Near-data attention vs moving the rows: one GQA group (4 query heads), 2,048 kept rows.
    print(
      "\n### One head group's step: PartialAttention (exact) vs Gather of keys+values then local attention\n"
    )
    let client = variants[0].client(connections: 1)
    let heads = 4
    let steps = quick ? 50 : 200
    let queries = (0..<heads * d).map { _ in random.signedUnit() }
    // Distinct rows in ascending order, as a worker's kept set is (the node refuses others).
    let stepTokens = (0..<steps).map { _ in
      var chosen = Set<UInt32>()
      while chosen.count < gatherRows { chosen.insert(UInt32(random.next() % UInt64(rows))) }
      return chosen.sorted()
    }
    let scale = 1 / Float(d).squareRoot()
    func request(_ i: Int) -> PartialAttentionRequest {
      PartialAttentionRequest(
        shard: shard, mode: .exact, headDim: d, scale: scale,
        heads: (0..<heads).map { h in
          .exact(tokens: stepTokens[i], query: Array(queries[h * d..<(h + 1) * d]))
        })
    }
    let partialBytes = (
      request(0).encoded().readableBytes,
      PartialAttentionResponse(
        headDim: d, maxScores: .init(repeating: 0, count: heads),
        sumExps: .init(repeating: 0, count: heads),
        outputs: .init(repeating: 0, count: heads * d)
      ).encoded().readableBytes
    )
    let gatherBytes = (
      GatherRequest(shard: shard, tokens: stepTokens[0], includeKeys: true).encoded().readableBytes,
      8 + 2 * gatherRows * d * 2
    )
    let attentionRequests = (0..<steps).map(request)
    let nearAll = try await interleaved(
      variants, connections: 1, requests: steps, inFlight: 1
    ) { client, i in
      _ = try await client.partialAttention(attentionRequests[i])
    }
    let near = nearAll[0].1
    let nearVariants = Array(nearAll.dropFirst())
    let far = try await measure(requests: steps, inFlight: 1) { i in
      let rows = try await client.gather(
        GatherRequest(shard: shard, tokens: stepTokens[i], includeKeys: true))
      let keys = try HalfMatrix(halves: rows.keyArray!, cols: d)
      let values = try HalfMatrix(halves: rows.valueArray, cols: d)
      _ = try FullAttention.attend(queries: queries, heads: heads, keys: keys, values: values)
    }
    // Both compute the same thing.
    let a = try await client.partialAttention(request(0))
    let rowsBack = try await client.gather(
      GatherRequest(shard: shard, tokens: stepTokens[0], includeKeys: true))
    let b = try FullAttention.attend(
      queries: queries, heads: heads, keys: HalfMatrix(halves: rowsBack.keyArray!, cols: d),
      values: HalfMatrix(halves: rowsBack.valueArray, cols: d))
    let diff = zip(a.outputs, b.outputs).map { abs($0 - $1) }.max() ?? 0
    precondition(diff < 1e-3, "near-data and local attention disagree by \(diff)")
    await client.close()
    print("| path | bytes sent | bytes received | p50 step | p99 step | mean step |")
    print("|---|---|---|---|---|---|")
    print(
      "| PartialAttention (near data) | \(partialBytes.0) | \(partialBytes.1) | \(ms(near.p50)) | \(ms(near.p99)) | \(ms(near.seconds / Double(steps))) |"
    )
    for (name, m) in nearVariants {
      print(
        "| PartialAttention, \(name) (x open: \(String(format: "%.3f", near.seconds / m.seconds))) | \(partialBytes.0) | \(partialBytes.1) | \(ms(m.p50)) | \(ms(m.p99)) | \(ms(m.seconds / Double(steps))) |"
      )
    }
    print(
      "| Gather K+V + local attention | \(gatherBytes.0) | \(gatherBytes.1) | \(ms(far.p50)) | \(ms(far.p99)) | \(ms(far.seconds / Double(steps))) |"
    )
    print(
      "\nbytes on the wire: \(String(format: "%.0fx", Double(gatherBytes.0 + gatherBytes.1) / Double(partialBytes.0 + partialBytes.1))) fewer near data; step latency ratio gather/partial = \(String(format: "%.2f", far.p50 / near.p50))"
    )
  }

  /// One memory-node process under test and how a client reaches it.
  struct NodeVariant {
    var name: String
    var port: Int
    var credential: DataPlaneCredential?
    var computeThreads: Int?

    func client(connections: Int) -> MemoryNodeClient {
      MemoryNodeClient(
        endpoint: MemoryNodeEndpoint(id: "bench", data: HostPort(host: "127.0.0.1", port: port)),
        connections: connections, credential: credential)
    }
  }

  // MARK: Measurement

  struct Measurement {
    var seconds: Double
    var p50: Double
    var p99: Double
  }

  /// Rounds of ``measure(requests:inFlight:_:)`` over every variant, the order rotated each
  /// round so that none always runs first (warm-up) or last; per variant, the round of median
  /// wall time. The machine's noise between runs is larger than the differences measured.
  func interleaved(
    _ variants: [NodeVariant], connections: Int, requests: Int, inFlight: Int, rounds: Int = 5,
    _ body: @escaping @Sendable (MemoryNodeClient, Int) async throws -> Void
  ) async throws -> [(String, Measurement)] {
    let clients = variants.map { $0.client(connections: connections) }
    for client in clients { try await client.ping() }
    var runs = [[Measurement]](repeating: [], count: variants.count)
    for round in 0..<rounds {
      for k in 0..<variants.count {
        let v = (k + round) % variants.count
        let client = clients[v]
        runs[v].append(
          try await measure(requests: requests, inFlight: inFlight) { try await body(client, $0) })
      }
    }
    for client in clients { await client.close() }
    return variants.indices.map { v in
      (variants[v].name, runs[v].sorted { $0.seconds < $1.seconds }[rounds / 2])
    }
  }

  /// Runs `requests` calls of `body`, `inFlight` at a time; wall time and latency percentiles.
  func measure(requests: Int, inFlight: Int, _ body: @escaping @Sendable (Int) async throws -> Void)
    async throws
    -> Measurement
  {
    let next = SharedCounter()
    let start = DispatchTime.now().uptimeNanoseconds
    let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
      for _ in 0..<inFlight {
        group.addTask {
          var mine: [Double] = []
          while true {
            let i = next.value.add(1, ordering: .relaxed).oldValue
            if i >= requests { break }
            let t0 = DispatchTime.now().uptimeNanoseconds
            try await body(i)
            mine.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
          }
          return mine
        }
      }
      var all: [Double] = []
      for try await part in group { all += part }
      return all.sorted()
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    func pct(_ p: Double) -> Double {
      latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]
    }
    return Measurement(seconds: seconds, p50: pct(0.5), p99: pct(0.99))
  }

  /// One TCP stream on loopback: a NIO client writes 1 MiB buffers that a NIO server discards.
  func loopbackBandwidth() async throws -> Double {
    let total = quick ? 512 << 20 : 2 << 30
    let received = SharedCounter()
    let done = SharedContinuation()
    final class Sink: ChannelInboundHandler, Sendable {
      typealias InboundIn = ByteBuffer
      let onBytes: @Sendable (Int) -> Void
      init(_ onBytes: @escaping @Sendable (Int) -> Void) { self.onBytes = onBytes }
      func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onBytes(unwrapInboundIn(data).readableBytes)
      }
    }
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(
            Sink { n in
              if received.value.add(n, ordering: .relaxed).newValue >= total {
                done.resume()
              }
            })
        }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connect(to: server.localAddress!).get()
    let chunk = ByteBuffer(repeating: 7, count: 1 << 20)
    let start = DispatchTime.now().uptimeNanoseconds
    await withCheckedContinuation { continuation in
      done.set(continuation)
      client.eventLoop.execute {
        @Sendable func pump(_ sent: Int) {
          guard sent < total else { return }
          client.writeAndFlush(chunk).whenSuccess { pump(sent + chunk.readableBytes) }
        }
        pump(0)
      }
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    try await client.close()
    try await server.close()
    return Double(total) / seconds
  }

  // MARK: Processes

  func locateHKV() throws -> URL {
    let candidates = [
      ProcessInfo.processInfo.environment["HKV_BIN"],
      "../.build/release/hkv", ".build/release/hkv",
    ].compactMap { $0 }
    for path in candidates where FileManager.default.isExecutableFile(atPath: path) {
      return URL(fileURLWithPath: path)
    }
    throw BenchError(
      "hkv not found: run `swift build -c release --product hkv` in the repository root (or set HKV_BIN)"
    )
  }

  func spawn(_ executable: URL, _ arguments: [String], environment: [String: String] = [:])
    throws -> Process
  {
    // Tied to this process: a benchmark that crashes or is killed leaves no node or Redis.
    let process = Process.tiedToParent(executable, arguments, environment: environment)
    process.standardOutput = FileHandle.nullDevice
    let log = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-bench-\(executable.lastPathComponent).log")
    FileManager.default.createFile(atPath: log.path, contents: nil)
    process.standardError = try FileHandle(forWritingTo: log)
    try process.runWithDefaultSignalMask()
    return process
  }

  func freePort() throws -> Int {
    let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .bind(host: "127.0.0.1", port: 0).wait()
    let port = channel.localAddress!.port!
    try channel.close().wait()
    return port
  }

  func waitForPort(_ port: Int) async throws {
    for _ in 0..<200 {
      if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port).get()
      {
        try? await channel.close()
        return
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw BenchError("nothing listens on port \(port)")
  }

  func redisVersion() -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
    process.arguments = ["--version"]
    let pipe = Pipe()
    process.standardOutput = pipe
    guard (try? process.run()) != nil else { return "(not found)" }
    process.waitUntilExit()
    let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return text.split(separator: " ").first { $0.hasPrefix("v=") }.map { String($0.dropFirst(2)) }
      ?? "?"
  }
}

final class SharedCounter: Sendable {
  let value = Atomic<Int>(0)
}

final class SharedContinuation: Sendable {
  private let slot = Mutex<CheckedContinuation<Void, Never>?>(nil)
  func set(_ c: CheckedContinuation<Void, Never>) { slot.withLock { $0 = c } }
  func resume() {
    let c = slot.withLock { s in
      defer { s = nil }
      return s
    }
    c?.resume()
  }
}

/// Table lines go straight to stdout, unbuffered, so a long run shows its rows as they come.
private func print(_ text: String) {
  FileHandle.standardOutput.write(Data((text + "\n").utf8))
}

/// A progress line on stderr (stdout carries the tables).
func progress(_ text: String) {
  FileHandle.standardError.write(Data("[dataplane] \(text)\n".utf8))
}

struct BenchError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

extension SeededGenerator {
  /// A uniform value in [-1, 1).
  mutating func signedUnit() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
}
