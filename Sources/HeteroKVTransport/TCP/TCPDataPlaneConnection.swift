import HeteroKVCore
import HeteroKVWire
import NIOCore
import NIOPosix

/// A pipelined TCP connection to a data-plane server.
public final class TCPDataPlaneConnection: DataPlaneConnection {
  private let channel: any Channel
  /// The server's address.
  public let remoteAddress: SocketAddress

  /// Connects to `host:port`. Fails with `.unavailable` naming the address when the
  /// connection cannot be made within `connectTimeout`.
  public static func connect(
    host: String, port: Int, limits: DataPlaneLimits = .standard,
    connectTimeout: Duration = .seconds(5),
    group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
  ) async throws(HeteroKVError) -> TCPDataPlaneConnection {
    do {
      let channel = try await ClientBootstrap(group: group)
        .connectTimeout(.nanoseconds(connectTimeout.nanoseconds))
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandlers([
              ByteToMessageHandler(FrameDecoder(limits: limits)),
              FrameEncoder(),
              ClientFrameHandler(limits: limits),
            ])
          }
        }
        .connect(host: host, port: port).get()
      let address =
        try channel.remoteAddress ?? SocketAddress.makeAddressResolvingHost(host, port: port)
      return TCPDataPlaneConnection(channel: channel, remoteAddress: address)
    } catch {
      throw HeteroKVError(.unavailable, "cannot connect to \(host):\(port): \(error)", cause: error)
    }
  }

  private init(channel: any Channel, remoteAddress: SocketAddress) {
    self.channel = channel
    self.remoteAddress = remoteAddress
  }

  public var isActive: Bool { channel.isActive }

  public func call(opcode: Opcode, payload: ByteBuffer, timeout: Duration?)
    async throws(HeteroKVError) -> ByteBuffer
  {
    try await start(opcode: opcode, payload: payload, timeout: timeout).value()
  }

  /// Hands the request to the channel's loop in one task, which also wires its response to
  /// the pending call there (no second hop to register the callback).
  public func start(opcode: Opcode, payload: ByteBuffer, timeout: Duration?) -> PendingCall {
    let pending = PendingCall()
    let loop = channel.eventLoop
    let promise = loop.makePromise(of: Frame.self)
    let deadline = timeout.map { NIODeadline.now() + .nanoseconds($0.nanoseconds) }
    let request = OutboundRequest(
      opcode: opcode, payload: payload, deadline: deadline, promise: promise)
    let channel = self.channel
    let peer = remoteAddress
    let send: @Sendable () -> Void = {
      promise.futureResult.whenComplete { result in
        switch result {
        case .success(let frame):
          if let error = frame.decodedError() {
            pending.complete(.failure(error))
          } else {
            pending.complete(.success(frame.payload))
          }
        case .failure(let error as HeteroKVError):
          pending.complete(.failure(error))
        case .failure(let error):
          pending.complete(
            .failure(
              HeteroKVError(
                .connectionClosed, "connection to \(peer) failed: \(error)", cause: error)))
        }
      }
      // A channel already closed drops the write before the handler sees it: the request
      // fails rather than wait for ever.
      let written = loop.makePromise(of: Void.self)
      written.futureResult.whenFailure { error in
        promise.fail(
          HeteroKVError(.connectionClosed, "write to \(peer) failed: \(error)", cause: error))
      }
      channel.writeAndFlush(request, promise: written)
    }
    if loop.inEventLoop {
      send()
    } else {
      loop.execute(send)
    }
    return pending
  }

  public func close() async {
    try? await channel.close()
  }
}

/// A request on its way out, with the promise its response completes.
struct OutboundRequest: Sendable {
  var opcode: Opcode
  var payload: ByteBuffer
  var deadline: NIODeadline?
  var promise: EventLoopPromise<Frame>
}

/// Assigns request ids, remembers each request's promise until its response (or deadline, or
/// the connection's end) arrives. Lives on the channel's event loop: no locks.
final class ClientFrameHandler: ChannelDuplexHandler {
  typealias InboundIn = InboundFrame
  typealias OutboundIn = OutboundRequest
  typealias OutboundOut = Frame

  private struct Pending {
    var promise: EventLoopPromise<Frame>
    var timer: Scheduled<Void>?
  }

  private let limits: DataPlaneLimits
  private var pending: [UInt64: Pending] = [:]
  private var nextID: UInt64 = 1
  private var closed = false

  init(limits: DataPlaneLimits) { self.limits = limits }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    let request = unwrapOutboundIn(data)
    if closed {
      request.promise.fail(HeteroKVError(.connectionClosed, "connection is closed"))
      promise?.fail(ChannelError.ioOnClosedChannel)
      return
    }
    let id = nextID
    nextID &+= 1
    var timer: Scheduled<Void>?
    if let deadline = request.deadline {
      let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
      timer = context.eventLoop.scheduleTask(deadline: deadline) {
        bound.value.expire(id)
      }
    }
    pending[id] = Pending(promise: request.promise, timer: timer)
    let frame = Frame(
      opcode: request.opcode.rawValue, flags: [], requestID: id, payload: request.payload)
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    let writePromise = context.eventLoop.makePromise(of: Void.self)
    writePromise.futureResult.whenFailure { error in
      bound.value.fail(id, HeteroKVError(.connectionClosed, "write failed: \(error)", cause: error))
    }
    if let promise { writePromise.futureResult.cascade(to: promise) }
    context.write(wrapOutboundOut(frame), promise: writePromise)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .frame(let frame):
      guard let entry = pending.removeValue(forKey: frame.header.requestID) else { return }
      entry.timer?.cancel()
      entry.promise.succeed(frame)
    case .corrupt(let header, let error):
      fail(header.requestID, error)
    }
  }

  func channelInactive(context: ChannelHandlerContext) {
    failAll(HeteroKVError(.connectionClosed, "connection closed by the server"))
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    let message: String
    if let rejection = error as? FrameRejection {
      message = "server sent an unreadable frame: \(rejection.error.message)"
    } else {
      message = "connection error: \(error)"
    }
    failAll(HeteroKVError(.connectionClosed, message))
    context.close(promise: nil)
  }

  private func expire(_ id: UInt64) {
    guard let entry = pending.removeValue(forKey: id) else { return }
    entry.promise.fail(HeteroKVError(.deadlineExceeded, "no response before the deadline"))
  }

  private func fail(_ id: UInt64, _ error: HeteroKVError) {
    guard let entry = pending.removeValue(forKey: id) else { return }
    entry.timer?.cancel()
    entry.promise.fail(error)
  }

  private func failAll(_ error: HeteroKVError) {
    closed = true
    let entries = pending
    pending.removeAll()
    for entry in entries.values {
      entry.timer?.cancel()
      entry.promise.fail(error)
    }
  }
}
