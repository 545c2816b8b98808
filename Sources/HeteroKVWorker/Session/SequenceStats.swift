import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

/// What releasing a sequence did.
public struct ReleaseOutcome: Sendable, Hashable {
  /// Bytes the memory tier held for the sequence, all copies.
  public var releasedBytes: Int
  /// Nodes that could not be told to drop their rows (dead or cut off).
  public var unreachableNodes: [String]
  /// The coordinator could not be reached to close the sequence; the worker retries in the
  /// background until it can (or until its own lease lapses and the coordinator closes it).
  public var coordinatorPending: Bool = false
}
