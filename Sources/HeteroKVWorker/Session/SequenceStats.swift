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
}
