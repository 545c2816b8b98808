import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

/// A sequence's footprint and traffic.
public struct SequenceStats: Sendable, Hashable, Codable {
  /// One KV head's role, cap and worker bytes.
  public struct Head: Sendable, Hashable, Codable {
    public var layer: Int
    public var kvHead: Int
    public var role: HeadRole
    public var cap: Int
    public var residentBytes: Int
  }
  public var ref: SequenceRef
  /// Tokens of the longest layer.
  public var tokens: Int
  public var prefillTokens: Int
  public var policy: BudgetPolicyKind
  /// Bytes resident on the worker (codes, caches, unshipped rows).
  public var workerBytes: Int
  /// Bytes the memory tier holds for the sequence, all copies.
  public var memoryTierBytes: Int
  /// fp16 K+V of every token of every layer.
  public var fullKVBytes: Int
  public var decodeSteps: Int
  /// Bytes moved between worker and memory tier (puts, near-data attention, refreshes).
  public var bytesMoved: Int
  public var refreshes: Int
  /// Requests answered by a replica after the first holder failed.
  public var failovers: Int
  /// Rows (tokens x heads) not yet on the memory tier.
  public var unshippedRows: Int
  /// Rows at least one memory node holds; with `unshippedRows`, every row of every head.
  public var storedRows: Int
  /// Over every query head of every decode step: tokens attended, and tokens the context
  /// held. `keptTokens / contextTokens` is the share a step keeps (1 for full attention).
  public var keptTokens: Int
  public var contextTokens: Int
  /// Bytes moved by decode steps alone: near-data attention and decode rows shipped.
  public var decodeBytesMoved: Int
  /// Shards that fewer nodes hold in full than their placement names.
  public var underReplicatedShards: Int
  public var heads: [Head]

  /// The share of the context a query head's decode step attends, on average.
  public var keptShare: Double {
    contextTokens > 0 ? Double(keptTokens) / Double(contextTokens) : 0
  }

  /// Bytes moved per decode step, on average.
  public var decodeBytesPerStep: Double {
    decodeSteps > 0 ? Double(decodeBytesMoved) / Double(decodeSteps) : 0
  }
}

/// What releasing a sequence did.
public struct ReleaseOutcome: Sendable, Hashable {
  /// Bytes the memory tier held for the sequence, all copies.
  public var releasedBytes: Int
  /// Nodes that could not be told to drop their rows (dead or cut off).
  public var unreachableNodes: [String]
}
