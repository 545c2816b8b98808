import HeteroKVCore
import HeteroKVWire
import NIOCore

/// What a data-plane server serves: one request in, one response payload (or error) out.
/// Every transport (TCP, RDMA) drives the same handler, so a node behaves the same over each.
public protocol DataPlaneRequestHandler: Sendable {
  /// Serves one request whose frame was already read and checksummed. Runs on an I/O thread
  /// and must not block for long.
  func handle(opcode: Opcode, payload: ByteBuffer, allocator: ByteBufferAllocator) -> Result<
    ByteBuffer, HeteroKVError
  >

  /// Told about each frame rejected before it reached `handle` (bad checksum, garbage,
  /// unknown opcode), so the node can count them.
  func rejected(_ error: HeteroKVError)
}

/// The server-side steps every transport shares: validating a decoded frame and producing the
/// response frame.
enum RequestDispatch {
  static func respond(
    to frame: Frame, handler: any DataPlaneRequestHandler, allocator: ByteBufferAllocator
  ) -> Frame {
    let header = frame.header
    if header.flags.contains(.response) {
      let error = HeteroKVError(.invalidArgument, "a response frame was sent to a server")
      handler.rejected(error)
      return .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
    }
    guard let opcode = Opcode(rawValue: header.opcode) else {
      let error = HeteroKVError(.unknownOpcode, "opcode \(header.opcode) is not served")
      handler.rejected(error)
      return .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
    }
    switch handler.handle(opcode: opcode, payload: frame.payload, allocator: allocator) {
    case .success(let payload):
      return Frame(
        opcode: header.opcode, flags: .response, requestID: header.requestID, payload: payload)
    case .failure(let error):
      return .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
    }
  }
}
