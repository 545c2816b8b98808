import HeteroKVCore
import NIOCore

/// The fixed header that starts every data-plane frame (24 bytes, little-endian):
///
/// | offset | size | field |
/// | --- | --- | --- |
/// | 0 | 4 | magic `0x31564B48` ("HKV1" as bytes) |
/// | 4 | 1 | protocol version (1) |
/// | 5 | 1 | opcode |
/// | 6 | 2 | flags (bit 0 response, bit 1 error) |
/// | 8 | 8 | request id, echoed by the response |
/// | 16 | 4 | payload length in bytes |
/// | 20 | 4 | CRC-32C of the payload |
public struct FrameHeader: Sendable, Hashable {
  /// The magic number, read as a little-endian 32-bit integer ("HKV1" on the wire).
  public static let magic: UInt32 = 0x3156_4B48
  /// The protocol version this code speaks.
  public static let currentVersion: UInt8 = 1
  /// Size of the header in bytes.
  public static let size = 24

  /// Protocol version of the frame.
  public var version: UInt8
  /// Raw opcode (unknown values are kept so that the peer can be told which one it sent).
  public var opcode: UInt8
  /// Response and error bits.
  public var flags: FrameFlags
  /// Chosen by the requester, echoed in the response; lets many requests share a connection.
  public var requestID: UInt64
  /// Length of the payload that follows.
  public var payloadLength: UInt32
  /// CRC-32C of the payload.
  public var checksum: UInt32

  /// A header from its fields.
  public init(
    version: UInt8 = FrameHeader.currentVersion, opcode: UInt8, flags: FrameFlags,
    requestID: UInt64, payloadLength: UInt32, checksum: UInt32
  ) {
    self.version = version
    self.opcode = opcode
    self.flags = flags
    self.requestID = requestID
    self.payloadLength = payloadLength
    self.checksum = checksum
  }

  /// Writes the 24 header bytes.
  public func write(to buffer: inout ByteBuffer) {
    buffer.writeInteger(FrameHeader.magic, endianness: .little)
    buffer.writeInteger(version)
    buffer.writeInteger(opcode)
    buffer.writeInteger(flags.rawValue, endianness: .little)
    buffer.writeInteger(requestID, endianness: .little)
    buffer.writeInteger(payloadLength, endianness: .little)
    buffer.writeInteger(checksum, endianness: .little)
  }
}

/// Bits of a frame header's flags field.
public struct FrameFlags: OptionSet, Sendable, Hashable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  /// The frame answers a request.
  public static let response = FrameFlags(rawValue: 1)
  /// The response is an error; its payload is an encoded `HeteroKVError`.
  public static let error = FrameFlags(rawValue: 2)
}

/// One frame: a header and its payload.
public struct Frame: Sendable {
  /// The header, with length and checksum matching the payload.
  public var header: FrameHeader
  /// The payload bytes.
  public var payload: ByteBuffer

  /// A frame carrying `payload`, with its length and CRC-32C filled in.
  public init(opcode: UInt8, flags: FrameFlags, requestID: UInt64, payload: ByteBuffer) {
    self.header = FrameHeader(
      opcode: opcode, flags: flags, requestID: requestID,
      payloadLength: UInt32(payload.readableBytes), checksum: CRC32C.checksum(payload))
    self.payload = payload
  }

  /// A frame whose header was already read and checked.
  public init(header: FrameHeader, payload: ByteBuffer) {
    self.header = header
    self.payload = payload
  }

  /// The opcode, when it is one this code knows.
  public var opcode: Opcode? { Opcode(rawValue: header.opcode) }

  /// An error response to `requestID`.
  public static func error(
    _ error: HeteroKVError, opcode: UInt8, requestID: UInt64, allocator: ByteBufferAllocator
  ) -> Frame {
    var payload = allocator.buffer(capacity: 4 + error.message.utf8.count)
    ErrorPayload(error).encode(into: &payload)
    return Frame(
      opcode: opcode, flags: [.response, .error], requestID: requestID, payload: payload)
  }

  /// The header and payload as one buffer (tests and simple writers; servers write the two
  /// parts separately to avoid copying the payload).
  public func serialized(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
    var out = allocator.buffer(capacity: FrameHeader.size + payload.readableBytes)
    header.write(to: &out)
    out.writeImmutableBuffer(payload)
    return out
  }
}

/// The payload of an error frame: code (u16), message length (u16), UTF-8 message.
struct ErrorPayload {
  var error: HeteroKVError

  init(_ error: HeteroKVError) { self.error = error }

  func encode(into buffer: inout ByteBuffer) {
    let bytes = Array(error.message.utf8.prefix(Int(UInt16.max)))
    buffer.writeInteger(error.code.wireValue, endianness: .little)
    buffer.writeInteger(UInt16(bytes.count), endianness: .little)
    buffer.writeBytes(bytes)
  }

  static func decode(_ buffer: inout ByteBuffer, limits: DataPlaneLimits) -> HeteroKVError {
    guard let raw = buffer.readInteger(endianness: .little, as: UInt16.self),
      let length = buffer.readInteger(endianness: .little, as: UInt16.self),
      Int(length) <= buffer.readableBytes
    else { return HeteroKVError(.malformedFrame, "truncated error frame") }
    let kept = min(Int(length), limits.maxErrorMessageBytes)
    let message = buffer.readString(length: kept) ?? "(message not UTF-8)"
    buffer.moveReaderIndex(forwardBy: Int(length) - kept)
    guard let code = HeteroKVError.Code(wireValue: raw) else {
      return HeteroKVError(.internalError, "peer sent unknown error code \(raw): \(message)")
    }
    return HeteroKVError(code, message)
  }
}

extension Frame {
  /// The error carried by an error response, or nil for a success.
  public func decodedError(limits: DataPlaneLimits = .standard) -> HeteroKVError? {
    guard header.flags.contains(.error) else { return nil }
    var copy = payload
    return ErrorPayload.decode(&copy, limits: limits)
  }
}
