import HeteroKVCore
import HeteroKVWire
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The data plane over TCP: accepts connections, reads pipelined frames, answers each in
/// order through a ``DataPlaneRequestHandler``. Garbage (bad magic, oversized or
/// wrong-version frames) gets an error frame where a request id is known and then a closed
/// connection; a checksum mismatch or a bad request gets an error frame and the connection
/// stays up.
public final class TCPDataPlaneServer: Sendable {
  private let channel: any Channel
  private let connections: OpenConnections
  private let computePool: NIOThreadPool?
  /// The server's own event loops (``DataPlaneServerOptions/eventLoopThreads``), shut down
  /// with it.
  private let ownLoops: MultiThreadedEventLoopGroup?
  /// The address the server listens on (the real port when 0 was asked for).
  public let localAddress: SocketAddress

  /// Binds `host:port` (port 0 picks a free one) and starts serving.
  public static func start(
    host: String, port: Int, handler: any DataPlaneRequestHandler,
    limits: DataPlaneLimits = .standard, options: DataPlaneServerOptions = .init(),
    group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
  ) async throws -> TCPDataPlaneServer {
    let connections = OpenConnections()
    let computePool =
      options.computeThreads > 0 ? NIOThreadPool(numberOfThreads: options.computeThreads) : nil
    computePool?.start()
    let ownLoops =
      options.eventLoopThreads > 0
      ? MultiThreadedEventLoopGroup(numberOfThreads: options.eventLoopThreads) : nil
    let channel: any Channel
    do {
      channel = try await ServerBootstrap(group: ownLoops ?? group)
        .serverChannelOption(.backlog, value: 256)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.maxMessagesPerRead, value: 16)
        .childChannelInitializer { channel in
          // Over the cap, a connection is closed before it can send anything.
          guard options.admits(open: connections.count, handler: handler) else {
            return channel.close()
          }
          connections.insert(channel)
          return channel.eventLoop.makeCompletedFuture {
            let activity = ConnectionActivity()
            try channel.pipeline.syncOperations.addHandlers([
              ConnectionWatchdog(
                activity: activity, idleTimeout: options.idleTimeout,
                partialFrameTimeout: options.partialFrameTimeout, logger: logger),
              ByteToMessageHandler(FrameDecoder(limits: limits)),
              FrameEncoder(),
              ServerFrameHandler(
                handler: handler, session: DataPlaneSession(access: options.access),
                activity: activity, computePool: computePool, logger: logger),
            ])
          }
        }
        .bind(host: host, port: port).get()
    } catch {
      try? await computePool?.shutdownGracefully()
      try? await ownLoops?.shutdownGracefully()
      throw error
    }
    guard let address = channel.localAddress else {
      try? await channel.close()
      try? await computePool?.shutdownGracefully()
      try? await ownLoops?.shutdownGracefully()
      throw HeteroKVError(.internalError, "listening socket has no local address")
    }
    return TCPDataPlaneServer(
      channel: channel, localAddress: address, connections: connections, computePool: computePool,
      ownLoops: ownLoops)
  }

  private init(
    channel: any Channel, localAddress: SocketAddress, connections: OpenConnections,
    computePool: NIOThreadPool?, ownLoops: MultiThreadedEventLoopGroup?
  ) {
    self.channel = channel
    self.localAddress = localAddress
    self.connections = connections
    self.computePool = computePool
    self.ownLoops = ownLoops
  }

  /// Stops accepting connections and closes the open ones (their requests in flight are
  /// answered first where the response was already written).
  public func close() async {
    try? await channel.close()
    for connection in connections.all() {
      try? await connection.close()
    }
    try? await computePool?.shutdownGracefully()
    try? await ownLoops?.shutdownGracefully()
  }

  /// Completes when the listening socket closes.
  public func waitUntilClosed() async {
    try? await channel.closeFuture.get()
  }
}

/// The accepted connections still open, so that closing the server closes them too.
final class OpenConnections: Sendable {
  private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

  func insert(_ channel: any Channel) {
    let key = ObjectIdentifier(channel)
    channels.withLock { $0[key] = channel }
    channel.closeFuture.whenComplete { _ in
      _ = self.channels.withLock { $0.removeValue(forKey: key) }
    }
  }

  func all() -> [any Channel] { channels.withLock { Array($0.values) } }

  var count: Int { channels.withLock { $0.count } }
}

/// Bytes a connection has received, and how many of them whole frames accounted for: the
/// difference is a frame still arriving. Touched only on the connection's event loop.
final class ConnectionActivity {
  var receivedBytes = 0
  var framedBytes = 0
  var lastRead = NIODeadline.now()
  var midFrame: Bool { receivedBytes > framedBytes }
}

/// Closes a connection that has been silent too long: `idleTimeout` between frames,
/// `partialFrameTimeout` in the middle of one (a client that sends part of a frame and
/// stalls would otherwise hold its buffer forever).
final class ConnectionWatchdog: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer

  private let activity: ConnectionActivity
  private let idleTimeout: TimeAmount
  private let partialFrameTimeout: TimeAmount
  private let logger: Logger
  private var task: RepeatedTask?

  init(
    activity: ConnectionActivity, idleTimeout: Duration, partialFrameTimeout: Duration,
    logger: Logger
  ) {
    self.activity = activity
    self.idleTimeout = .nanoseconds(Int64(idleTimeout.nanoseconds))
    self.partialFrameTimeout = .nanoseconds(Int64(partialFrameTimeout.nanoseconds))
    self.logger = logger
  }

  func handlerAdded(context: ChannelHandlerContext) {
    let tick = TimeAmount.nanoseconds(
      max(10_000_000, min(idleTimeout.nanoseconds, partialFrameTimeout.nanoseconds) / 4))
    let bound = NIOLoopBound((context, activity), eventLoop: context.eventLoop)
    let idle = idleTimeout
    let partial = partialFrameTimeout
    let logger = self.logger
    task = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { task in
      let (context, activity) = bound.value
      let silent = NIODeadline.now() - activity.lastRead
      let limit = activity.midFrame ? partial : idle
      guard silent >= limit else { return }
      logger.info(
        "closing a silent data-plane connection",
        metadata: [
          "mid_frame": "\(activity.midFrame)", "silent_ms": "\(silent.nanoseconds / 1_000_000)",
        ])
      task.cancel()
      context.close(promise: nil)
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) { task?.cancel() }

  func channelInactive(context: ChannelHandlerContext) {
    task?.cancel()
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    activity.receivedBytes += unwrapInboundIn(data).readableBytes
    activity.lastRead = .now()
    context.fireChannelRead(data)
  }
}

extension InboundFrame {
  /// Bytes this frame took on the wire.
  var wireBytes: Int {
    switch self {
    case .frame(let frame): FrameHeader.size + frame.payload.readableBytes
    case .corrupt(let header, _): FrameHeader.size + Int(header.payloadLength)
    }
  }
}
