import HeteroKVCore
import HeteroKVWire
import Logging
import NIOCore
import NIOPosix

/// Answers one connection's decoded frames in arrival order. Cheap requests are served on the
/// event loop; long ones (a PartialAttention or Gather over many rows) run on the server's
/// compute pool, so one long request does not stall every connection of its loop. While one
/// is on the pool, the connection's later frames wait behind it: a connection's requests take
/// effect and are answered in the order they were sent. Reading stops while the peer is not
/// draining responses or too many requests wait, so a client that pipelines without reading
/// cannot grow the node's memory.
final class ServerFrameHandler: ChannelInboundHandler {
  typealias InboundIn = InboundFrame
  typealias OutboundOut = Frame

  /// Requests of one connection that may wait behind a pooled one before reading pauses.
  static let maxWaiting = 32
  /// PartialAttention asking for at least this many multiply-adds (about a millisecond of one
  /// core) runs on the compute pool; a smaller one is served on the loop, where it costs less
  /// than the two thread hops the pool would add (a decode step's requests are small).
  static let pooledWork = 4 << 20
  /// Gather of at least this many rows runs on the pool.
  static let pooledGatherRows = 16 << 10

  /// Whether a request is long enough to be served on the compute pool.
  static func runsOnPool(_ opcode: Opcode, payload: ByteBuffer) -> Bool {
    switch opcode {
    case .partialAttention:
      (PartialAttentionRequest.estimatedWork(payload: payload) ?? 0) >= pooledWork
    case .gather: payload.readableBytes / 4 >= pooledGatherRows
    default: false
    }
  }

  /// What one admitted frame needs.
  private enum Work: Sendable {
    case answer(Frame, close: Bool)
    case inline(Frame, Opcode, DataPlaneGrant)
    case pooled(Frame, Opcode, DataPlaneGrant, NIOThreadPool)

    /// The answer and whether to close after it, computed on the calling thread; nil for
    /// pooled work.
    func answerNow(handler: any DataPlaneRequestHandler, allocator: ByteBufferAllocator)
      -> (Frame, Bool)?
    {
      switch self {
      case .answer(let response, let close): (response, close)
      case .inline(let frame, let opcode, let grant):
        (
          RequestDispatch.serve(
            frame, opcode: opcode, grant: grant, handler: handler, allocator: allocator), false
        )
      case .pooled: nil
      }
    }
  }

  private let handler: any DataPlaneRequestHandler
  private let session: DataPlaneSession
  private let activity: ConnectionActivity
  private let computePool: NIOThreadPool?
  private let logger: Logger
  /// The last waiting request's write; nil when none waits.
  private var tail: EventLoopFuture<Void>?
  private var waiting = 0
  private var reading = true
  private var removed = false
  /// Set once a refused credential is answered: the connection is closing, and nothing it sent
  /// after that is served.
  private var closing = false

  init(
    handler: any DataPlaneRequestHandler, session: DataPlaneSession, activity: ConnectionActivity,
    computePool: NIOThreadPool?, logger: Logger
  ) {
    self.handler = handler
    self.session = session
    self.activity = activity
    self.computePool = computePool
    self.logger = logger
  }

  func handlerRemoved(context: ChannelHandlerContext) { removed = true }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let inbound = unwrapInboundIn(data)
    activity.framedBytes += inbound.wireBytes
    guard !closing else { return }
    let allocator = context.channel.allocator
    let work: Work
    switch inbound {
    case .frame(let frame):
      switch RequestDispatch.admit(frame, handler: handler, session: session, allocator: allocator)
      {
      case .answer(let response, let close):
        work = .answer(response, close: close)
        closing = close
      case .serve(let opcode, let grant):
        if let computePool, Self.runsOnPool(opcode, payload: frame.payload) {
          work = .pooled(frame, opcode, grant, computePool)
        } else {
          work = .inline(frame, opcode, grant)
        }
      }
    case .corrupt(let header, let error):
      handler.rejected(error)
      work = .answer(
        .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator),
        close: false)
    }
    if tail == nil, let (response, close) = work.answerNow(handler: handler, allocator: allocator) {
      emit(response, close: close, context: context, flush: false)
    } else {
      enqueue(work, context: context)
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    context.flush()
    updateReading(context)
    context.fireChannelReadComplete()
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    updateReading(context)
    context.fireChannelWritabilityChanged()
  }

  /// Runs `work` once every earlier waiting request has been answered, then writes its answer.
  private func enqueue(_ work: Work, context: ChannelHandlerContext) {
    let loop = context.eventLoop
    let handler = self.handler
    let allocator = context.channel.allocator
    let bound = NIOLoopBound((self, context), eventLoop: loop)
    waiting += 1
    updateReading(context)
    let previous = tail ?? loop.makeSucceededVoidFuture()
    let next = previous.flatMap { () -> EventLoopFuture<(Frame, Bool)> in
      if let answer = work.answerNow(handler: handler, allocator: allocator) {
        return loop.makeSucceededFuture(answer)
      }
      guard case .pooled(let frame, let opcode, let grant, let pool) = work else {
        preconditionFailure("only pooled work has no answer now")
      }
      return pool.runIfActive(eventLoop: loop) {
        let response = RequestDispatch.serve(
          frame, opcode: opcode, grant: grant, handler: handler, allocator: allocator)
        return (response, false)
      }
    }.map { response, close in
      let (me, context) = bound.value
      me.waiting -= 1
      me.emit(response, close: close, context: context, flush: true)
      me.updateReading(context)
    }.flatMapErrorThrowing { error in
      // The pool stopped (the server is closing): nothing more is answered here.
      let (me, context) = bound.value
      if !me.removed { context.close(promise: nil) }
      throw error
    }
    tail = next
    next.whenComplete { _ in
      let me = bound.value.0
      if me.tail === next { me.tail = nil }
    }
  }

  private func emit(
    _ response: Frame, close: Bool, context: ChannelHandlerContext, flush: Bool
  ) {
    guard !removed else { return }
    if close {
      let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
      context.writeAndFlush(wrapOutboundOut(response)).whenComplete { _ in
        bound.value.close(promise: nil)
      }
    } else if flush {
      context.writeAndFlush(wrapOutboundOut(response), promise: nil)
    } else {
      context.write(wrapOutboundOut(response), promise: nil)
    }
  }

  /// Reads while the peer drains responses and few requests wait.
  private func updateReading(_ context: ChannelHandlerContext) {
    let read = context.channel.isWritable && waiting < Self.maxWaiting
    guard read != reading, !removed else { return }
    reading = read
    // The pause was the node's, not the peer's silence: the watchdog counts from now.
    if read { activity.lastRead = .now() }
    context.channel.setOption(.autoRead, value: read).whenFailure { _ in }
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
