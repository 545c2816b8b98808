import HeteroKVCore
import NIOCore
import Synchronization

/// A request already sent, whose response payload is awaited later. A decode step starts
/// its near-data requests one by one as it makes them and reads the answers at the end:
/// an answer that has arrived by then is taken without suspending, and one that has not
/// costs one resumption, where a child task per request costs a task start, a resumption
/// and a hop back to its parent.
public final class PendingCall: Sendable {
  private enum State {
    case waiting(UnsafeContinuation<Result<ByteBuffer, HeteroKVError>, Never>?)
    case done(Result<ByteBuffer, HeteroKVError>)
  }

  private let state = Mutex(State.waiting(nil))

  /// A call whose answer is to come through ``complete(_:)``.
  public init() {}

  /// A call that has already failed.
  public convenience init(failed error: HeteroKVError) {
    self.init()
    complete(.failure(error))
  }

  /// Records the answer and wakes the caller waiting on it; later answers are ignored.
  public func complete(_ result: Result<ByteBuffer, HeteroKVError>) {
    let waiter = state.withLock {
      state -> UnsafeContinuation<Result<ByteBuffer, HeteroKVError>, Never>? in
      guard case .waiting(let waiter) = state else { return nil }
      state = .done(result)
      return waiter
    }
    waiter?.resume(returning: result)
  }

  /// The answer, if it has arrived.
  public var result: Result<ByteBuffer, HeteroKVError>? {
    state.withLock { state in
      if case .done(let result) = state { return result }
      return nil
    }
  }

  /// The response payload, as ``DataPlaneConnection/call(opcode:payload:timeout:)`` returns
  /// it: waits only when it has not arrived. One caller may wait on a call.
  public func value() async throws(HeteroKVError) -> ByteBuffer {
    if let result { return try result.get() }
    let result = await withUnsafeContinuation { continuation in
      let ready = state.withLock { state -> Result<ByteBuffer, HeteroKVError>? in
        switch state {
        case .done(let result): return result
        case .waiting(let other):
          precondition(other == nil, "two callers wait on one pending call")
          state = .waiting(continuation)
          return nil
        }
      }
      if let ready { continuation.resume(returning: ready) }
    }
    return try result.get()
  }
}
