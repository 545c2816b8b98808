import HeteroKVMemoryClient
import HeteroKVWire
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A raw TCP peer that writes arbitrary bytes and collects whatever comes back.
final class RawPeer: Sendable {
  private final class State: Sendable {
    let received = Mutex(ByteBuffer())
    let closed = Mutex(false)
  }

  private final class Collector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let state: State
    init(_ state: State) { self.state = state }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      var bytes = unwrapInboundIn(data)
      state.received.withLock { _ = $0.writeBuffer(&bytes) }
    }
    func channelInactive(context: ChannelHandlerContext) { state.closed.withLock { $0 = true } }
  }

  private let channel: any Channel
  private let state: State

  static func connect(_ address: HostPort) async throws -> RawPeer {
    let state = State()
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(Collector(state))
        }
      }
      .connect(host: address.host, port: address.port).get()
    return RawPeer(channel: channel, state: state)
  }

  private init(channel: any Channel, state: State) {
    self.channel = channel
    self.state = state
  }

  func write(_ bytes: ByteBuffer) async throws { try await channel.writeAndFlush(bytes) }

  /// Waits until a whole frame has arrived (returned and consumed) or the server closed the
  /// connection (nil).
  func nextFrame(timeout: Duration = .seconds(5)) async throws -> InboundFrame? {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      let frame = try state.received.withLock { buffer in
        try FrameCodec.readFrame(from: &buffer, limits: .standard)
      }
      if let frame { return frame }
      if state.closed.withLock({ $0 }) { return nil }
      try await Task.sleep(for: .milliseconds(1))
    }
    Issue.record("no frame and no close within \(timeout)")
    return nil
  }

  /// Everything received until the server closes the connection, as text.
  func readUntilClosed(timeout: Duration = .seconds(5)) async throws -> String {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline, !state.closed.withLock({ $0 }) {
      try await Task.sleep(for: .milliseconds(2))
    }
    return state.received.withLock { String(buffer: $0) }
  }

  func close() async { try? await channel.close() }

  /// Whether, for `duration`, nothing arrived and the connection stayed open.
  func staysSilent(for duration: Duration) async throws -> Bool {
    try await Task.sleep(for: duration)
    return state.received.withLock { $0.readableBytes == 0 } && !state.closed.withLock { $0 }
  }
}

/// A frame cut short is not answered (the node waits for the rest); when the rest arrives,
/// the whole frame is answered under its request id.
func expectTruncatedFrameWaits(
  _ peer: RawPeer, frame: ByteBuffer, cut: Int, completes: Bool,
  sourceLocation: SourceLocation = #_sourceLocation
) async throws {
  try await peer.write(frame.getSlice(at: 0, length: cut)!)
  #expect(
    try await peer.staysSilent(for: .milliseconds(20)),
    "a partial frame was answered or closed", sourceLocation: sourceLocation)
  guard completes else { return }
  try await peer.write(frame.getSlice(at: cut, length: frame.readableBytes - cut)!)
  let reply = try await peer.nextFrame()
  guard case .frame(let answer) = reply else {
    Issue.record("the completed frame was not answered", sourceLocation: sourceLocation)
    return
  }
  #expect(answer.header.requestID == 8, sourceLocation: sourceLocation)
}

@Suite("Data-plane fuzzing")
struct FuzzTests {
  @Test("random and mutated frames get errors or a closed connection; stored rows never change")
  func fuzz() async throws {
    try await withRunningNodes([nodeConfiguration("fuzz", capacity: 32 << 20, pageBytes: 4096)]) {
      nodes in
      let endpoint = nodes[0].endpoint
      let client = MemoryNodeClient(endpoint: endpoint, connections: 1)
      var random = TestRandom(state: 2024)
      let d = 64
      let shards = (0..<3).map { ShardID(namespace: 1, sequence: 5, layer: UInt16($0), kvHead: 0) }
      var stored: [ShardID: [Float16]] = [:]
      for (i, shard) in shards.enumerated() {
        let rows = 100 + 50 * i
        let values = random.halves(rows * d)
        _ = try await client.put(
          PutRequest(
            shard: shard, startToken: 0, headDim: d, values: values, keys: i == 0 ? values : nil))
        stored[shard] = values
      }
      // A well-behaved client that stays connected through the whole run.
      let bystander = MemoryNodeClient(endpoint: endpoint, connections: 1)
      try await bystander.ping()

      func validRequest(_ random: inout TestRandom) -> (Opcode, ByteBuffer) {
        let shard = shards[random.int(3)]
        switch random.int(5) {
        case 0:
          return (
            .put,
            PutRequest(
              shard: shard, startToken: UInt32(random.int(400)), headDim: d,
              values: random.halves(d)
            ).encoded()
          )
        case 1:
          return (
            .gather,
            GatherRequest(shard: shard, tokens: (0..<8).map { _ in UInt32(random.int(120)) })
              .encoded()
          )
        case 2:
          return (
            .partialAttention,
            PartialAttentionRequest(
              shard: shard, mode: random.int(2) == 0 ? .weights : .exact, headDim: d, scale: 0.125,
              heads: [.exact(tokens: [1, 2, 3], query: (0..<d).map { _ in random.float() })]
            ).encoded()
          )
        case 3: return (.stats, StatsRequest().encoded())
        default: return (.ping, PingRequest().encoded())
        }
      }

      var outcomes: [String: Int] = [:]
      for iteration in 0..<300 {
        let peer = try await RawPeer.connect(endpoint.data)
        let kind = iteration % 6
        switch kind {
        case 0:  // Garbage (at least the four bytes where the magic should be).
          var junk = ByteBuffer()
          junk.writeBytes(
            (0..<(4 + random.int(300))).map { _ in UInt8(truncatingIfNeeded: random.next()) })
          try await peer.write(junk)
          #expect(try await peer.nextFrame() == nil, "garbage must close the connection")
          outcomes["garbage closed", default: 0] += 1
        case 1, 2:  // A payload byte flipped: with the old CRC, or with a recomputed one.
          let (op, payload) = validRequest(&random)
          var mutated = payload
          if mutated.readableBytes > 0 {
            let at = random.int(mutated.readableBytes)
            mutated.setInteger(
              UInt8(truncatingIfNeeded: random.next()) | 1 ^ mutated.getInteger(
                at: at, as: UInt8.self)!, at: at)
          }
          var frame = Frame(
            opcode: op.rawValue, flags: [], requestID: UInt64(iteration), payload: mutated)
          if kind == 1 && payload.readableBytes > 0 {
            frame.header.checksum = CRC32C.checksum(payload)
          }
          try await peer.write(frame.serialized())
          guard case .frame(let reply) = try await peer.nextFrame() else {
            Issue.record("a well-framed request must be answered")
            break
          }
          #expect(reply.header.requestID == UInt64(iteration))
          if kind == 1 && payload.readableBytes > 0 {
            #expect(reply.decodedError()?.code == .checksumMismatch)
          }
          outcomes[reply.decodedError().map { "\($0.code)" } ?? "ok", default: 0] += 1
          // The connection still serves.
          try await peer.write(
            Frame(opcode: Opcode.ping.rawValue, flags: [], requestID: 1, payload: ByteBuffer())
              .serialized())
          guard case .frame(let pong) = try await peer.nextFrame() else {
            Issue.record("connection should survive a bad request")
            break
          }
          #expect(pong.decodedError() == nil)
        case 3:  // Header damage: magic, version, a huge length, an unknown opcode.
          let (op, payload) = validRequest(&random)
          var frame = Frame(opcode: op.rawValue, flags: [], requestID: 7, payload: payload)
            .serialized()
          switch random.int(4) {
          case 0: frame.setInteger(UInt8(0), at: 1)
          case 1: frame.setInteger(UInt8(2 + random.int(200)), at: 4)
          case 2: frame.setInteger(UInt32(1 << 31), at: 16, endianness: .little)
          default: frame.setInteger(UInt8(100 + random.int(100)), at: 5)
          }
          try await peer.write(frame)
          if let reply = try await peer.nextFrame(), case .frame(let f) = reply {
            #expect(f.decodedError() != nil, "a damaged header must never succeed")
            outcomes["header \(f.decodedError()!.code)", default: 0] += 1
          } else {
            outcomes["header closed", default: 0] += 1
          }
        case 4:  // Truncated: the header promises more than arrives, then the peer leaves.
          let (op, payload) = validRequest(&random)
          let frame = Frame(opcode: op.rawValue, flags: [], requestID: 8, payload: payload)
            .serialized()
          let completes = random.int(2) == 0
          try await expectTruncatedFrameWaits(
            peer, frame: frame,
            cut: max(1, frame.readableBytes - 1 - random.int(frame.readableBytes - 1)),
            completes: completes)
          outcomes[completes ? "truncated, completed" : "truncated", default: 0] += 1
        default:  // A response frame sent to the server.
          let frame = Frame(
            opcode: Opcode.stats.rawValue, flags: .response, requestID: 3, payload: ByteBuffer())
          try await peer.write(frame.serialized())
          guard case .frame(let reply) = try await peer.nextFrame() else {
            Issue.record("expected an error reply")
            break
          }
          #expect(reply.decodedError()?.code == .invalidArgument)
        }
        await peer.close()
      }

      // Every stored row is unchanged, and both clients still work.
      for (shard, values) in stored {
        let rows = values.count / d
        let back = try await client.gather(
          GatherRequest(shard: shard, tokens: (0..<rows).map(UInt32.init)))
        #expect(back.valueArray == values, "rows of \(shard) changed")
      }
      try await bystander.ping()
      #expect(outcomes["garbage closed"] == 50)
      #expect((outcomes["checksumMismatch"] ?? 0) > 0)
      await client.close()
      await bystander.close()
    }
  }
}
