import Foundation
import HeteroKVTestSupport
import Testing

/// The JSON report of `hkv demo`, the fields the test checks.
struct DemoJSON: Decodable {
  var mode: String
  var layers, kvHeads, tokens, decodeSteps: Int
  var workerBytes, memoryTierBytes, fullKvBytes: Int
  var memoryNodeBytes: [String: UInt64]
  var workerFraction: Double
  var tokenRows, storedRows, unshippedRows: Int
  var meanRelativeError, massRecall, decodeStepsPerSecond: Double
  var bytesMovedPerStep: Int
  var budgets: [Budget]

  struct Budget: Decodable {
    var layer, kvHead, cap: Int
    var role: String
  }
}

@Suite("hkv demo", .serialized)
struct DemoProcessTests {
  func demo(_ extra: [String]) throws -> DemoJSON {
    let run = try runHKV(
      [
        "demo", "--json", "--tokens", "3000", "--layers", "1", "--steps", "3", "--key-codec",
        "scalar", "--key-bits", "4",
      ] + extra)
    #expect(run.status == 0, "stderr: \(run.err)")
    let decoder = JSONDecoder()
    decoder.keyDecodingStrategy = .convertFromSnakeCase
    return try decoder.decode(DemoJSON.self, from: run.out)
  }

  func checkConsistent(_ report: DemoJSON, nodes: Int) {
    #expect(report.tokens == 3000)
    #expect(report.decodeSteps == 3)
    // Every row of every head is on a memory node or still on its way from the worker.
    #expect(report.tokenRows == (3000 + 3) * report.layers * report.kvHeads)
    #expect(report.storedRows + report.unshippedRows == report.tokenRows)
    #expect(report.fullKvBytes == report.tokenRows * 128 * 4)
    // One copy of every stored row's fp16 values and keys, in the nodes' pages.
    #expect(report.memoryTierBytes == report.storedRows * 128 * 4)
    #expect(report.memoryNodeBytes.count == nodes)
    #expect(report.memoryNodeBytes.values.reduce(0, +) >= UInt64(report.memoryTierBytes))
    #expect(report.workerBytes > 0 && report.workerFraction < 0.5)
    #expect(report.massRecall > 0.3 && report.massRecall <= 1.0001)
    #expect(report.meanRelativeError < 0.6)
    #expect(report.decodeStepsPerSecond > 0 && report.bytesMovedPerStep > 0)
    #expect(report.budgets.count == 8)
    #expect(
      report.budgets.allSatisfy {
        ["anchor", "volatile", "pivot"].contains($0.role) || $0.role.hasPrefix("satellite(")
      })
  }

  @Test("in process: --json parses and its bytes and rows account for every token")
  func inProcess() throws {
    let report = try demo(["--memnodes", "2"])
    #expect(report.mode == "in-process")
    checkConsistent(report, nodes: 2)
  }

  @Test("--processes runs the coordinator, memory nodes and worker as child processes")
  func childProcesses() throws {
    let report = try demo(["--memnodes", "2", "--processes"])
    #expect(report.mode == "processes")
    checkConsistent(report, nodes: 2)
  }
}
