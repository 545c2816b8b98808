import HeteroKVCore
import NIOCore

/// A message of the data plane: encodes to a frame payload and decodes from one, checking
/// every field against the payload's length and the ``DataPlaneLimits``.
public protocol DataPlaneMessage: Sendable {
  /// The operation this message belongs to (requests and responses share it).
  static var opcode: Opcode { get }
  /// Appends the encoded message.
  func encode(into buffer: inout ByteBuffer)
  /// Decodes a whole payload; trailing bytes are an error.
  init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError)
}

/// A request, tied to the type of its response.
public protocol DataPlaneRequest: DataPlaneMessage {
  associatedtype Response: DataPlaneMessage
}

extension DataPlaneMessage {
  /// The encoded payload in a new buffer.
  public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
    var buffer = allocator.buffer(capacity: 64)
    encode(into: &buffer)
    return buffer
  }
}

/// Bit 0 of a put's or gather's flags: keys accompany the values.
let keysFlag: UInt16 = 1

func checkHeadDim(_ headDim: Int, _ what: String, limits: DataPlaneLimits) throws(HeteroKVError) {
  guard headDim > 0, headDim <= limits.maxHeadDim else {
    throw HeteroKVError(
      .invalidArgument, "\(what): head dimension \(headDim) outside 1...\(limits.maxHeadDim)")
  }
}
