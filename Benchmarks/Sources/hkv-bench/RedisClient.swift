import NIOCore
import NIOPosix
import Synchronization

/// A minimal pipelined Redis (RESP2) client for the peer comparison: commands are written as
/// arrays of bulk strings, replies parsed incrementally and matched to callers in order.
final class RedisConnection: Sendable {
  private let channel: any Channel

  static func connect(host: String, port: Int) async throws -> RedisConnection {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .channelOption(.socketOption(.tcp_nodelay), value: 1)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(RESPDecoder()), RESPClientHandler(),
          ])
        }
      }
      .connect(host: host, port: port).get()
    return RedisConnection(channel: channel)
  }

  private init(channel: any Channel) { self.channel = channel }

  /// A command encoded once (RESP array of bulk strings), to be sent many times.
  static func encode(_ arguments: [ByteBuffer]) -> ByteBuffer {
    var out = ByteBuffer()
    out.reserveCapacity(16 + arguments.reduce(0) { $0 + $1.readableBytes + 16 })
    out.writeString("*\(arguments.count)\r\n")
    for argument in arguments {
      out.writeString("$\(argument.readableBytes)\r\n")
      out.writeImmutableBuffer(argument)
      out.writeString("\r\n")
    }
    return out
  }

  /// Sends a command encoded by ``encode(_:)``.
  func send(encoded command: ByteBuffer) async throws -> RESPReply {
    let promise = channel.eventLoop.makePromise(of: RESPReply.self)
    channel.writeAndFlush(RESPRequest(bytes: command, promise: promise), promise: nil)
    return try await promise.futureResult.get()
  }

  /// Sends one command; returns its reply (bulk strings of an array reply concatenated).
  func send(_ arguments: [ByteBuffer]) async throws -> RESPReply {
    let promise = channel.eventLoop.makePromise(of: RESPReply.self)
    var out = channel.allocator.buffer(
      capacity: 16 + arguments.reduce(0) { $0 + $1.readableBytes + 16 })
    out.writeString("*\(arguments.count)\r\n")
    for argument in arguments {
      out.writeString("$\(argument.readableBytes)\r\n")
      out.writeImmutableBuffer(argument)
      out.writeString("\r\n")
    }
    channel.writeAndFlush(RESPRequest(bytes: out, promise: promise), promise: nil)
    return try await promise.futureResult.get()
  }

  func send(_ words: String...) async throws -> RESPReply {
    try await send(words.map { ByteBuffer(string: $0) })
  }

  func close() async { try? await channel.close() }
}

struct RESPRequest: Sendable {
  var bytes: ByteBuffer
  var promise: EventLoopPromise<RESPReply>
}

/// A reply: a status or error line, an integer, or the bulk strings of an array (or one bulk
/// string) concatenated, with their count.
struct RESPReply: Sendable {
  var line: String?
  var error: String?
  var integer: Int?
  var count = 0
  var nils = 0
  var data = ByteBuffer()
}

final class RESPClientHandler: ChannelDuplexHandler {
  typealias InboundIn = RESPReply
  typealias OutboundIn = RESPRequest
  typealias OutboundOut = ByteBuffer
  private var waiting: CircularBuffer<EventLoopPromise<RESPReply>> = []

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    let request = unwrapOutboundIn(data)
    waiting.append(request.promise)
    context.write(wrapOutboundOut(request.bytes), promise: promise)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let reply = unwrapInboundIn(data)
    guard let promise = waiting.popFirst() else { return }
    promise.succeed(reply)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    while let p = waiting.popFirst() { p.fail(error) }
    context.close(promise: nil)
  }

  func channelInactive(context: ChannelHandlerContext) {
    while let p = waiting.popFirst() { p.fail(ChannelError.ioOnClosedChannel) }
  }
}

/// Parses RESP2 replies incrementally: an array reply's elements are taken as they arrive, so
/// a large MGET reply is not re-scanned from the start each time more bytes come in.
struct RESPDecoder: ByteToMessageDecoder {
  typealias InboundOut = RESPReply
  private var current: RESPReply?
  private var remaining = 0

  private func line(_ buffer: inout ByteBuffer) -> String? {
    guard let end = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\r")),
      end + 1 < buffer.writerIndex
    else { return nil }
    let text = buffer.readString(length: end - buffer.readerIndex)!
    buffer.moveReaderIndex(forwardBy: 2)
    return text
  }

  /// One bulk string into `reply`; false when incomplete (nothing consumed).
  private func bulk(_ buffer: inout ByteBuffer, into reply: inout RESPReply) -> Bool {
    let start = buffer.readerIndex
    guard let header = line(&buffer) else { return false }
    let length = Int(header.dropFirst())!
    if length < 0 {
      reply.nils += 1
      reply.count += 1
      return true
    }
    guard buffer.readableBytes >= length + 2 else {
      buffer.moveReaderIndex(to: start)
      return false
    }
    var slice = buffer.readSlice(length: length)!
    reply.data.writeBuffer(&slice)
    buffer.moveReaderIndex(forwardBy: 2)
    reply.count += 1
    return true
  }

  mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws
    -> DecodingState
  {
    if var reply = current {
      while remaining > 0 {
        guard bulk(&buffer, into: &reply) else {
          current = reply
          return .needMoreData
        }
        remaining -= 1
      }
      current = nil
      context.fireChannelRead(wrapInboundOut(reply))
      return .continue
    }
    guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
      return .needMoreData
    }
    var reply = RESPReply()
    switch first {
    case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"):
      guard let text = line(&buffer) else { return .needMoreData }
      if first == UInt8(ascii: "+") { reply.line = String(text.dropFirst()) }
      if first == UInt8(ascii: "-") { reply.error = String(text.dropFirst()) }
      if first == UInt8(ascii: ":") { reply.integer = Int(text.dropFirst()) }
    case UInt8(ascii: "$"):
      guard bulk(&buffer, into: &reply) else { return .needMoreData }
    case UInt8(ascii: "*"):
      let start = buffer.readerIndex
      guard let text = line(&buffer) else {
        buffer.moveReaderIndex(to: start)
        return .needMoreData
      }
      remaining = max(0, Int(text.dropFirst())!)
      reply.data.reserveCapacity(remaining * 256)
      current = reply
      return .continue
    default:
      throw RESPError.protocolViolation(first)
    }
    context.fireChannelRead(wrapInboundOut(reply))
    return .continue
  }

  mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool)
    throws -> DecodingState
  {
    .needMoreData
  }
}

enum RESPError: Error { case protocolViolation(UInt8) }
