import HeteroKVCore
import NIOCore

/// A frame was rejected while it was being read. `isFatal` frames leave the stream
/// unsynchronised (bad magic, a length over the limit, a version this side cannot read), so
/// the connection must close after the error is sent; a checksum mismatch is not fatal: the
/// frame's bounds are known and the next frame can be read.
public struct FrameRejection: Error, Sendable {
  /// Why the frame was rejected.
  public var error: HeteroKVError
  /// The header, when it could be read (so the error can answer the right request).
  public var header: FrameHeader?
  /// Whether the stream can no longer be trusted.
  public var isFatal: Bool
}

/// What the frame reader yields: a checked frame, or a frame whose payload failed its
/// checksum (reported to the peer without closing the connection).
public enum InboundFrame: Sendable {
  case frame(Frame)
  case corrupt(FrameHeader, HeteroKVError)
}

/// Reads frames from a byte stream, checking magic, version, length bound and checksum before
/// it holds on to any payload.
public enum FrameCodec {
  /// Reads one frame from the front of `buffer` if a whole one is there; returns nil (and
  /// consumes nothing) when more bytes are needed. Throws ``FrameRejection`` for fatal errors.
  public static func readFrame(from buffer: inout ByteBuffer, limits: DataPlaneLimits)
    throws(FrameRejection) -> InboundFrame?
  {
    // The magic is checked as soon as its four bytes are in, so garbage is refused without
    // waiting for a whole header.
    guard buffer.readableBytes >= 4 else { return nil }
    let start = buffer.readerIndex
    let magic = buffer.getInteger(at: start, endianness: .little, as: UInt32.self)!
    guard magic == FrameHeader.magic else {
      throw FrameRejection(
        error: HeteroKVError(
          .malformedFrame,
          "bad magic 0x\(String(magic, radix: 16)) (expected 0x\(String(FrameHeader.magic, radix: 16)))"
        ), header: nil, isFatal: true)
    }
    guard buffer.readableBytes >= FrameHeader.size else { return nil }
    let header = FrameHeader(
      version: buffer.getInteger(at: start + 4)!,
      opcode: buffer.getInteger(at: start + 5)!,
      flags: FrameFlags(rawValue: buffer.getInteger(at: start + 6, endianness: .little)!),
      requestID: buffer.getInteger(at: start + 8, endianness: .little)!,
      payloadLength: buffer.getInteger(at: start + 16, endianness: .little)!,
      checksum: buffer.getInteger(at: start + 20, endianness: .little)!)
    guard header.version == FrameHeader.currentVersion else {
      throw FrameRejection(
        error: HeteroKVError(
          .unsupportedVersion,
          "protocol version \(header.version) is not supported (this node speaks \(FrameHeader.currentVersion))"
        ), header: header, isFatal: true)
    }
    guard Int(header.payloadLength) <= limits.maxPayloadBytes else {
      throw FrameRejection(
        error: HeteroKVError(
          .frameTooLarge,
          "payload of \(header.payloadLength) bytes exceeds the limit of \(limits.maxPayloadBytes)"
        ), header: header, isFatal: true)
    }
    let total = FrameHeader.size + Int(header.payloadLength)
    guard buffer.readableBytes >= total else { return nil }
    buffer.moveReaderIndex(forwardBy: FrameHeader.size)
    let payload = buffer.readSlice(length: Int(header.payloadLength))!
    let crc = CRC32C.checksum(payload)
    guard crc == header.checksum else {
      return .corrupt(
        header,
        HeteroKVError(
          .checksumMismatch,
          "payload CRC32C 0x\(String(crc, radix: 16)) does not match header 0x\(String(header.checksum, radix: 16))"
        ))
    }
    return .frame(Frame(header: header, payload: payload))
  }
}

/// SwiftNIO decoder: turns the inbound byte stream into ``InboundFrame``s.
public struct FrameDecoder: ByteToMessageDecoder {
  public typealias InboundOut = InboundFrame
  /// Bounds applied to each frame.
  public let limits: DataPlaneLimits

  /// A decoder enforcing `limits`.
  public init(limits: DataPlaneLimits) { self.limits = limits }

  public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws
    -> DecodingState
  {
    guard let frame = try FrameCodec.readFrame(from: &buffer, limits: limits) else {
      return .needMoreData
    }
    context.fireChannelRead(wrapInboundOut(frame))
    return .continue
  }

  public mutating func decodeLast(
    context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
  ) throws -> DecodingState {
    while try decode(context: context, buffer: &buffer) == .continue {}
    return .needMoreData
  }
}

/// SwiftNIO encoder: writes a ``Frame`` as its header followed by its payload, as two writes,
/// so a large payload is never copied into a combined buffer.
public final class FrameEncoder: ChannelOutboundHandler, Sendable {
  public typealias OutboundIn = Frame
  public typealias OutboundOut = ByteBuffer

  public init() {}

  public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?)
  {
    let frame = unwrapOutboundIn(data)
    var header = context.channel.allocator.buffer(capacity: FrameHeader.size)
    frame.header.write(to: &header)
    if frame.payload.readableBytes == 0 {
      context.write(wrapOutboundOut(header), promise: promise)
    } else {
      context.write(wrapOutboundOut(header), promise: nil)
      context.write(wrapOutboundOut(frame.payload), promise: promise)
    }
  }
}
