import Dispatch

/// Runs `body` for every index in `0..<count` on all cores and returns the results in order.
/// Used for independent per-head work; `body` must not share mutable state. Work of a few
/// heads or more is worth spreading; a single item runs inline.
public func parallelMap<T: Sendable>(_ count: Int, _ body: @Sendable (Int) throws -> T) throws
  -> [T]
{
  if count <= 1 { return try (0..<count).map(body) }
  let results = UnsafeMutableBufferPointer<Result<T, any Error>?>.allocate(capacity: count)
  results.initialize(repeating: nil)
  defer {
    results.deinitialize()
    results.deallocate()
  }
  nonisolated(unsafe) let slots = results
  DispatchQueue.concurrentPerform(iterations: count) { i in
    slots[i] = Result { try body(i) }
  }
  return try results.map { try $0!.get() }
}
