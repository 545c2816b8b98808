import Synchronization

/// A value set once and awaited by any number of tasks (a listening port, say): readers that
/// come early wait, later ones get it at once.
public final class AsyncValue<Value: Sendable>: Sendable {
  private enum State {
    case waiting([CheckedContinuation<Value, any Error>])
    case done(Result<Value, any Error>)
  }

  private let state = Mutex<State>(.waiting([]))

  public init() {}

  /// Sets the value (only the first set or fail counts).
  public func set(_ value: Value) { complete(.success(value)) }

  /// Fails every waiter, present and future.
  public func fail(_ error: any Error) { complete(.failure(error)) }

  /// The value, waiting for it if need be.
  public var value: Value {
    get async throws {
      try await withCheckedThrowingContinuation { continuation in
        let ready: Result<Value, any Error>? = state.withLock { s in
          switch s {
          case .waiting(var list):
            list.append(continuation)
            s = .waiting(list)
            return nil
          case .done(let result):
            return result
          }
        }
        if let ready { continuation.resume(with: ready) }
      }
    }
  }

  private func complete(_ result: Result<Value, any Error>) {
    let waiters: [CheckedContinuation<Value, any Error>] = state.withLock { s in
      guard case .waiting(let list) = s else { return [] }
      s = .done(result)
      return list
    }
    for w in waiters { w.resume(with: result) }
  }
}
