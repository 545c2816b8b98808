/// A memory node as placement sees it: its id and how much it can hold.
public struct PlacementNode: Sendable, Hashable {
  /// The node's id.
  public var id: String
  /// The weight of the node: its capacity in bytes (any positive scale works).
  public var weight: Double

  public init(id: String, weight: Double) {
    self.id = id
    self.weight = weight
  }
}

/// Capacity-weighted rendezvous (highest random weight) hashing: every (shard, node) pair gets
/// a score `-weight / ln(u)`, with `u` in (0, 1) a hash of the pair, and a shard lives on the
/// `replicas` nodes with the highest scores. A node gets shards in proportion to its weight;
/// adding a node moves to it only the shards it now wins, and removing one moves only the
/// shards it held. The hash is fixed (FNV-1a then a SplitMix64 finaliser over the shard id's
/// bytes and the node id's UTF-8), so every process computes the same placement.
public struct RendezvousPlacement: Sendable, Hashable {
  /// The nodes placed onto.
  public var nodes: [PlacementNode]
  /// How many distinct nodes hold each shard (capped by the node count).
  public var replicas: Int

  /// A placement over `nodes` with `replicas` copies of each shard.
  public init(nodes: [PlacementNode], replicas: Int) {
    precondition(replicas >= 1)
    self.nodes = nodes.filter { $0.weight > 0 }
    self.replicas = replicas
  }

  /// The nodes holding `shard`, best first (the first is the primary).
  public func nodes(for shard: ShardID) -> [String] {
    let key = shardHash(shard)
    var scored: [(score: Double, id: String)] = nodes.map { node in
      let u = unitInterval(mix(key ^ stringHash(node.id)))
      return (-node.weight / log(u), node.id)
    }
    scored.sort { $0.score != $1.score ? $0.score > $1.score : $0.id < $1.id }
    return scored.prefix(min(replicas, scored.count)).map(\.id)
  }

  private func shardHash(_ shard: ShardID) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    func eat(_ value: UInt64, bytes: Int) {
      var v = value
      for _ in 0..<bytes {
        h = (h ^ (v & 0xff)) &* 0x0000_0100_0000_01b3
        v >>= 8
      }
    }
    eat(UInt64(shard.namespace), bytes: 4)
    eat(shard.sequence, bytes: 8)
    eat(UInt64(shard.layer), bytes: 2)
    eat(UInt64(shard.kvHead), bytes: 2)
    eat(UInt64(shard.chunk), bytes: 4)
    return mix(h)
  }

  private func stringHash(_ text: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
    return mix(h)
  }

  private func mix(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// 53 random bits as a double strictly inside (0, 1).
  private func unitInterval(_ x: UInt64) -> Double {
    (Double(x >> 11) + 0.5) / Double(1 << 53)
  }
}

#if canImport(Glibc)
  import Glibc
#else
  import Foundation
#endif
