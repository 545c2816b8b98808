import HeteroKVCoordinator
import Testing

@Suite("Membership leases")
struct MembershipTableTests {
  @Test(
    "a lease renewed by heartbeats stays up; one that lapses is marked down and must re-register")
  func leases() {
    var table = MembershipTable(leaseSeconds: 5)
    let first = table.register(
      id: "m0", role: .memoryNode, dataAddress: "h:1", controlAddress: "h:2", capacityBytes: 100,
      now: 0)
    #expect(first == 1)
    table.register(
      id: "m1", role: .memoryNode, dataAddress: "h:3", controlAddress: "h:4", capacityBytes: 100,
      now: 0)
    table.register(
      id: "w0", role: .worker, dataAddress: "", controlAddress: "h:5", capacityBytes: 0, now: 0)
    // Nobody has lapsed at exactly the lease's end.
    var atFive = table
    let atFiveLapsed = atFive.expire(now: 5)
    #expect(atFiveLapsed.isEmpty)
    var down: [Double: [String]] = [:]
    for t in stride(from: 1.0, through: 9.0, by: 2) {
      let renewed = table.heartbeat(id: "m0", now: t)
      let lapsed = table.expire(now: t)
      #expect(renewed)
      #expect(!lapsed.contains("m0"))
      if !lapsed.isEmpty { down[t] = lapsed }
    }
    // m1 and w0 never renewed: marked down by the first check after 5 s.
    #expect(down == [7: ["m1", "w0"]])
    #expect(table.up(.memoryNode).map(\.id) == ["m0"])
    let lapsedRenewal = table.heartbeat(id: "m1", now: 9.5)
    let unknownRenewal = table.heartbeat(id: "nobody", now: 9.5)
    #expect(!lapsedRenewal, "a lapsed lease cannot be renewed")
    #expect(!unknownRenewal)
    let second = table.register(
      id: "m1", role: .memoryNode, dataAddress: "h:3", controlAddress: "h:4", capacityBytes: 100,
      now: 10)
    #expect(second == 2)
    #expect(table.up(.memoryNode).map(\.id) == ["m0", "m1"])
    // m0 last renewed at 9 (lease to 14); m1 registered again at 10 (lease to 15).
    let (a, b, c) = (table.expire(now: 13.9), table.expire(now: 14.5), table.expire(now: 15.1))
    #expect(a == [] && b == ["m0"] && c == ["m1"])
  }
}
