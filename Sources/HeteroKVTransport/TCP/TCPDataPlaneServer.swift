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
  /// The address the server listens on (the real port when 0 was asked for).
  public let localAddress: SocketAddress

  /// Binds `host:port` (port 0 picks a free one) and starts serving.
  public static func start(
    host: String, port: Int, handler: any DataPlaneRequestHandler,
    limits: DataPlaneLimits = .standard,
    group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
  ) async throws -> TCPDataPlaneServer {
    let connections = OpenConnections()
    let channel = try await ServerBootstrap(group: group)
      .serverChannelOption(.backlog, value: 256)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelOption(.maxMessagesPerRead, value: 16)
      .childChannelInitializer { channel in
        connections.insert(channel)
        return channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(FrameDecoder(limits: limits)),
            FrameEncoder(),
            ServerFrameHandler(handler: handler, logger: logger),
          ])
        }
      }
      .bind(host: host, port: port).get()
    guard let address = channel.localAddress else {
      throw HeteroKVError(.internalError, "listening socket has no local address")
    }
    return TCPDataPlaneServer(channel: channel, localAddress: address, connections: connections)
  }

  private init(channel: any Channel, localAddress: SocketAddress, connections: OpenConnections) {
    self.channel = channel
    self.localAddress = localAddress
    self.connections = connections
  }

  /// Stops accepting connections and closes the open ones (their requests in flight are
  /// answered first where the response was already written).
  public func close() async {
    try? await channel.close()
    for connection in connections.all() {
      try? await connection.close()
    }
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
}

/// Answers decoded frames in arrival order; stops reading while the peer is not draining
/// responses, so a client that pipelines without reading cannot grow the node's memory.
final class ServerFrameHandler: ChannelInboundHandler {
  typealias InboundIn = InboundFrame
  typealias OutboundOut = Frame

  private let handler: any DataPlaneRequestHandler
  private let logger: Logger

  init(handler: any DataPlaneRequestHandler, logger: Logger) {
    self.handler = handler
    self.logger = logger
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .frame(let frame):
      let response = RequestDispatch.respond(
        to: frame, handler: handler, allocator: context.channel.allocator)
      context.write(wrapOutboundOut(response), promise: nil)
    case .corrupt(let header, let error):
      handler.rejected(error)
      context.write(
        wrapOutboundOut(
          .error(
            error, opcode: header.opcode, requestID: header.requestID,
            allocator: context.channel.allocator)), promise: nil)
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    context.flush()
    if !context.channel.isWritable {
      context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
    }
    context.fireChannelReadComplete()
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable {
      context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
    }
    context.fireChannelWritabilityChanged()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    let rejection: FrameRejection? =
      (error as? FrameRejection)
      ?? (error as? ByteToMessageDecoderError).flatMap {
        if case .dataReceivedInErrorState(let inner, _) = $0 { return inner as? FrameRejection }
        return nil
      }
    if let rejection {
      handler.rejected(rejection.error)
      logger.warning(
        "closing data-plane connection: \(rejection.error)",
        metadata: ["peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
      if let header = rejection.header {
        let frame = Frame.error(
          rejection.error, opcode: header.opcode, requestID: header.requestID,
          allocator: context.channel.allocator)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in
          bound.value.close(promise: nil)
        }
        return
      }
    } else if !(error is ChannelError || error is IOError) {
      logger.warning("data-plane connection error: \(error)")
    }
    context.close(promise: nil)
  }
}
