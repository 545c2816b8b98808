import Foundation
import HeteroKVCore
import HeteroKVTransport
import HeteroKVWire
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A handler whose PartialAttention takes `work` of CPU time (a busy loop, as a large
/// attention would) and whose other requests answer at once with their opcode's name. The
/// server decides where to run a request from its header, so the probes send a real one.
struct SlowAttentionHandler: DataPlaneRequestHandler {
  let work: Duration

  func handle(
    opcode: Opcode, payload: ByteBuffer, allocator: ByteBufferAllocator, grant: DataPlaneGrant
  ) -> Result<ByteBuffer, HeteroKVError> {
    if opcode == .partialAttention {
      let end = ContinuousClock.now + work
      var spin = 0
      while ContinuousClock.now < end { spin &+= 1 }
    }
    return .success(allocator.buffer(string: opcode.name))
  }

  func rejected(_ error: HeteroKVError) {}
}

@Suite("Data-plane compute pool")
struct ComputePoolTests {
  /// Starts a server on one event-loop thread (so every connection shares it), sends a slow
  /// PartialAttention and a Ping pipelined on one connection, then a Ping on a second one;
  /// returns how long the second connection waited and the first connection's answers.
  func probe(computeThreads: Int) async throws -> (otherPing: Duration, answers: [String]) {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server = try await TCPDataPlaneServer.start(
      host: "127.0.0.1", port: 0, handler: SlowAttentionHandler(work: .milliseconds(600)),
      options: DataPlaneServerOptions(computeThreads: computeThreads), group: group,
      logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    let address = HostPort(host: "127.0.0.1", port: server.localAddress.port!)
    let busy = try await RawPeer.connect(address)
    let other = try await RawPeer.connect(address)
    func frame(_ opcode: Opcode, _ id: UInt64, _ payload: ByteBuffer = ByteBuffer()) -> ByteBuffer {
      Frame(opcode: opcode.rawValue, flags: [], requestID: id, payload: payload).serialized()
    }
    // Long enough for the pool: 40,000 shared tokens x 4 heads x 128 dims.
    let long = PartialAttentionRequest(
      shard: ShardID(sequence: 1, layer: 0, kvHead: 0), mode: .exact, headDim: 128, scale: 0.1,
      heads: (0..<4).map { _ in
        .exact(tokens: Array(0..<40_000), query: [Float](repeating: 0.5, count: 128))
      })
    #expect(
      PartialAttentionRequest.estimatedWork(payload: long.encoded()) == 40_000 * 4 * 128)
    var pipelined = frame(.partialAttention, 1, long.encoded())
    var second = frame(.ping, 2)
    pipelined.writeBuffer(&second)
    try await busy.write(pipelined)
    try await Task.sleep(for: .milliseconds(50))  // the attention is running
    let start = ContinuousClock.now
    try await other.write(frame(.ping, 3))
    _ = try await other.nextFrame()
    let otherPing = ContinuousClock.now - start
    var answers: [String] = []
    for _ in 0..<2 {
      if case .frame(let reply) = try await busy.nextFrame() {
        answers.append("\(reply.header.requestID):\(String(buffer: reply.payload))")
      }
    }
    await busy.close()
    await other.close()
    await server.close()
    try await group.shutdownGracefully()
    return (otherPing, answers)
  }

  @Test(
    "a long PartialAttention runs on the pool: another connection of the same event loop is answered meanwhile, and the busy connection's answers stay in order"
  )
  func longAttentionDoesNotStallTheLoop() async throws {
    let pooled = try await probe(computeThreads: 2)
    #expect(pooled.otherPing < .milliseconds(300), "ping waited \(pooled.otherPing)")
    #expect(pooled.answers == ["1:partial_attention", "2:ping"])
    // The same requests with no pool: the loop is held and the other ping waits its turn.
    let inline = try await probe(computeThreads: 0)
    #expect(inline.otherPing > .milliseconds(400), "ping waited \(inline.otherPing)")
    #expect(inline.answers == ["1:partial_attention", "2:ping"])
  }

  /// Pings a server while the shared event loop it may run on is held for 600 ms by other
  /// work (as a worker's I/O holds an in-process node's loop); returns the ping's wait.
  func pingWhileSharedLoopIsBusy(eventLoopThreads: Int) async throws -> Duration {
    let shared = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server = try await TCPDataPlaneServer.start(
      host: "127.0.0.1", port: 0, handler: SlowAttentionHandler(work: .zero),
      options: DataPlaneServerOptions(computeThreads: 0, eventLoopThreads: eventLoopThreads),
      group: shared, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    let address = HostPort(host: "127.0.0.1", port: server.localAddress.port!)
    let peer = try await RawPeer.connect(address)
    let held = shared.next().submit {
      let end = ContinuousClock.now + .milliseconds(600)
      while ContinuousClock.now < end {}
    }
    try await Task.sleep(for: .milliseconds(50))
    let start = ContinuousClock.now
    try await peer.write(
      Frame(opcode: Opcode.ping.rawValue, flags: [], requestID: 1, payload: ByteBuffer())
        .serialized())
    _ = try await peer.nextFrame()
    let waited = ContinuousClock.now - start
    try await held.get()
    await peer.close()
    await server.close()
    // Closed means closed: its own loops are shut down and the port refuses.
    await #expect(throws: (any Error).self) { _ = try await RawPeer.connect(address) }
    try await shared.shutdownGracefully()
    return waited
  }

  @Test(
    "a server on event loops of its own answers while the shared loops are held, and a server on the shared loops waits for them"
  )
  func ownEventLoopsAreNotHeldByOthers() async throws {
    let own = try await pingWhileSharedLoopIsBusy(eventLoopThreads: 1)
    #expect(own < .milliseconds(300), "ping waited \(own)")
    let sharing = try await pingWhileSharedLoopIsBusy(eventLoopThreads: 0)
    #expect(sharing > .milliseconds(400), "ping waited \(sharing)")
  }
}
