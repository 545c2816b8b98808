import HeteroKVCore
import HeteroKVWire
import NIOCore

/// A client's connection to one data-plane server, over any transport: requests are
/// pipelined (many in flight, answered by request id), each with an optional deadline.
public protocol DataPlaneConnection: Sendable {
  /// Sends one request and waits for its response payload. An error response is thrown as
  /// the node's ``HeteroKVError``; a lost connection as `.connectionClosed`; a missed
  /// deadline as `.deadlineExceeded`.
  func call(opcode: Opcode, payload: ByteBuffer, timeout: Duration?) async throws(HeteroKVError)
    -> ByteBuffer

  /// Sends one request now, from the calling thread, and returns its pending answer, which
  /// resolves as ``call(opcode:payload:timeout:)`` would.
  func start(opcode: Opcode, payload: ByteBuffer, timeout: Duration?) -> PendingCall

  /// Whether the connection can still carry requests.
  var isActive: Bool { get }

  /// Closes the connection; requests in flight fail with `.connectionClosed`.
  func close() async
}

extension DataPlaneConnection {
  /// A transport without a sending path of its own starts the call in a task.
  public func start(opcode: Opcode, payload: ByteBuffer, timeout: Duration?) -> PendingCall {
    let pending = PendingCall()
    Task {
      do throws(HeteroKVError) {
        pending.complete(
          .success(try await call(opcode: opcode, payload: payload, timeout: timeout)))
      } catch {
        pending.complete(.failure(error))
      }
    }
    return pending
  }

  /// Sends a typed request and decodes its typed response.
  public func send<Request: DataPlaneRequest>(
    _ request: Request, timeout: Duration? = nil, limits: DataPlaneLimits = .standard
  ) async throws(HeteroKVError) -> Request.Response {
    let payload = try await call(
      opcode: Request.opcode, payload: request.encoded(), timeout: timeout)
    return try Request.Response(payload: payload, limits: limits)
  }
}
