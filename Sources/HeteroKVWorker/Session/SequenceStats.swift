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
  /// Set when the coordinator could not be reached to close the sequence: the nodes still to
  /// be dropped that the close will name. The worker retries in the background until the
  /// coordinator takes it (or until its own lease lapses and the coordinator closes it).
  public var coordinatorPending: [String]? = nil
}
