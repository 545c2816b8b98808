import HeteroKVCore
import HeteroKVSettings
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

    /// A head's stats.
    public init(layer: Int, kvHead: Int, role: HeadRole, cap: Int, residentBytes: Int) {
      self.layer = layer
      self.kvHead = kvHead
      self.role = role
      self.cap = cap
      self.residentBytes = residentBytes
    }
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

  /// Stats from their parts.
  public init(
    ref: SequenceRef, tokens: Int, prefillTokens: Int, policy: BudgetPolicyKind, workerBytes: Int,
    memoryTierBytes: Int, fullKVBytes: Int, decodeSteps: Int, bytesMoved: Int, refreshes: Int,
    failovers: Int, unshippedRows: Int, storedRows: Int, keptTokens: Int, contextTokens: Int,
    decodeBytesMoved: Int, underReplicatedShards: Int, heads: [Head]
  ) {
    self.ref = ref
    self.tokens = tokens
    self.prefillTokens = prefillTokens
    self.policy = policy
    self.workerBytes = workerBytes
    self.memoryTierBytes = memoryTierBytes
    self.fullKVBytes = fullKVBytes
    self.decodeSteps = decodeSteps
    self.bytesMoved = bytesMoved
    self.refreshes = refreshes
    self.failovers = failovers
    self.unshippedRows = unshippedRows
    self.storedRows = storedRows
    self.keptTokens = keptTokens
    self.contextTokens = contextTokens
    self.decodeBytesMoved = decodeBytesMoved
    self.underReplicatedShards = underReplicatedShards
    self.heads = heads
  }

  /// The share of the context a query head's decode step attends, on average.
  public var keptShare: Double {
    contextTokens > 0 ? Double(keptTokens) / Double(contextTokens) : 0
  }

  /// Bytes moved per decode step, on average.
  public var decodeBytesPerStep: Double {
    decodeSteps > 0 ? Double(decodeBytesMoved) / Double(decodeSteps) : 0
  }
}

extension SequenceStats {
  /// The wire form.
  public var proto: Heterokv_V1_SequenceStats {
    .with {
      $0.ref = ref.proto
      $0.tokens = UInt64(tokens)
      $0.policy = policy.rawValue
      $0.workerBytes = UInt64(workerBytes)
      $0.memoryTierBytes = UInt64(memoryTierBytes)
      $0.fullKvBytes = UInt64(fullKVBytes)
      $0.decodeSteps = UInt64(decodeSteps)
      $0.bytesMoved = UInt64(bytesMoved)
      $0.refreshes = UInt64(refreshes)
      $0.failovers = UInt64(failovers)
      $0.unshippedRows = UInt64(unshippedRows)
      $0.storedRows = UInt64(storedRows)
      $0.keptTokens = UInt64(keptTokens)
      $0.contextTokens = UInt64(contextTokens)
      $0.decodeBytesMoved = UInt64(decodeBytesMoved)
      $0.underReplicatedShards = UInt64(underReplicatedShards)
      $0.prefillTokens = UInt64(prefillTokens)
      $0.heads = heads.map { h in
        .with {
          $0.layer = UInt32(h.layer)
          $0.kvHead = UInt32(h.kvHead)
          $0.role = h.role.name
          $0.cap = UInt64(h.cap)
          $0.residentBytes = UInt64(h.residentBytes)
          if case .satellite(let pivot) = h.role { $0.pivot = UInt32(pivot) }
        }
      }
    }
  }
}

extension SequenceStats {
  /// The stats a worker sent; throws when a field cannot be a worker's (an unknown policy
  /// or role, a count beyond Int).
  public init(_ proto: Heterokv_V1_SequenceStats) throws(HeteroKVError) {
    func int(_ value: UInt64, _ what: String) throws(HeteroKVError) -> Int {
      guard let v = Int(exactly: value) else {
        throw HeteroKVError(.malformedInput, "sequence stats: \(what) \(value) is out of range")
      }
      return v
    }
    guard let policy = BudgetPolicyKind(rawValue: proto.policy) else {
      throw HeteroKVError(.malformedInput, "sequence stats: unknown policy \"\(proto.policy)\"")
    }
    var heads: [Head] = []
    heads.reserveCapacity(proto.heads.count)
    for h in proto.heads {
      guard let role = HeadRole(name: h.role, pivot: Int(h.pivot)) else {
        throw HeteroKVError(.malformedInput, "sequence stats: unknown head role \"\(h.role)\"")
      }
      heads.append(
        Head(
          layer: Int(h.layer), kvHead: Int(h.kvHead), role: role, cap: try int(h.cap, "cap"),
          residentBytes: try int(h.residentBytes, "resident bytes")))
    }
    self.init(
      ref: SequenceRef(proto.ref), tokens: try int(proto.tokens, "tokens"),
      prefillTokens: try int(proto.prefillTokens, "prefill tokens"), policy: policy,
      workerBytes: try int(proto.workerBytes, "worker bytes"),
      memoryTierBytes: try int(proto.memoryTierBytes, "memory-tier bytes"),
      fullKVBytes: try int(proto.fullKvBytes, "full K/V bytes"),
      decodeSteps: try int(proto.decodeSteps, "decode steps"),
      bytesMoved: try int(proto.bytesMoved, "bytes moved"),
      refreshes: try int(proto.refreshes, "refreshes"),
      failovers: try int(proto.failovers, "failovers"),
      unshippedRows: try int(proto.unshippedRows, "unshipped rows"),
      storedRows: try int(proto.storedRows, "stored rows"),
      keptTokens: try int(proto.keptTokens, "kept tokens"),
      contextTokens: try int(proto.contextTokens, "context tokens"),
      decodeBytesMoved: try int(proto.decodeBytesMoved, "decode bytes moved"),
      underReplicatedShards: try int(proto.underReplicatedShards, "under-replicated shards"),
      heads: heads)
  }
}
