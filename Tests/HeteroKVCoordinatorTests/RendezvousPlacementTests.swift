import HeteroKVCoordinator
import HeteroKVWire
import Testing

@Suite("Rendezvous placement")
struct RendezvousPlacementTests {
  let shards: [ShardID] = (0..<8000).map { (i: Int) -> ShardID in
    let sequence = UInt64(i / 256)
    let layer = UInt16(i / 8 % 32)
    return ShardID(namespace: 0, sequence: sequence, layer: layer, kvHead: UInt16(i % 8))
  }

  func assignment(_ p: RendezvousPlacement) -> [ShardID: [String]] {
    Dictionary(uniqueKeysWithValues: shards.map { ($0, p.nodes(for: $0)) })
  }

  @Test("load follows capacity, replicas are distinct, and the result is the same every time")
  func balance() {
    let nodes = [
      PlacementNode(id: "a", weight: 1), PlacementNode(id: "b", weight: 1),
      PlacementNode(id: "c", weight: 2),
    ]
    let p = RendezvousPlacement(nodes: nodes, replicas: 2)
    var primaries: [String: Int] = [:]
    for shard in shards {
      let chosen = p.nodes(for: shard)
      #expect(chosen.count == 2 && Set(chosen).count == 2)
      primaries[chosen[0], default: 0] += 1
    }
    // Expected shares 1/4, 1/4, 1/2 of 8000 primaries; allow a few percent of noise.
    #expect(abs(Double(primaries["c"]!) / 8000 - 0.5) < 0.03)
    #expect(abs(Double(primaries["a"]!) / 8000 - 0.25) < 0.03)
    #expect(assignment(p) == assignment(RendezvousPlacement(nodes: nodes.reversed(), replicas: 2)))
  }

  @Test("a joining node takes only the shards it wins; a leaving node gives up only its own")
  func minimalMovement() {
    let three = (0..<3).map { PlacementNode(id: "n\($0)", weight: 1) }
    let four = three + [PlacementNode(id: "n3", weight: 1)]
    let before = assignment(RendezvousPlacement(nodes: three, replicas: 1))
    let after = assignment(RendezvousPlacement(nodes: four, replicas: 1))
    let moved = shards.filter { before[$0] != after[$0] }
    #expect(moved.allSatisfy { after[$0] == ["n3"] }, "a shard moved between old nodes")
    #expect(abs(Double(moved.count) / Double(shards.count) - 0.25) < 0.03)

    let withoutOne = assignment(RendezvousPlacement(nodes: Array(four.dropFirst()), replicas: 1))
    let movedOnLeave = shards.filter { after[$0] != withoutOne[$0] }
    #expect(
      movedOnLeave.allSatisfy { after[$0] == ["n0"] }, "a shard not on the leaving node moved")

    // With two replicas, a leaving node's shards keep their surviving copy.
    let r2 = assignment(RendezvousPlacement(nodes: four, replicas: 2))
    let r2Left = assignment(RendezvousPlacement(nodes: Array(four.dropFirst()), replicas: 2))
    for shard in shards {
      let survivors = r2[shard]!.filter { $0 != "n0" }
      #expect(Set(survivors).isSubset(of: Set(r2Left[shard]!)))
      if !r2[shard]!.contains("n0") { #expect(r2[shard] == r2Left[shard]) }
    }
  }
}
