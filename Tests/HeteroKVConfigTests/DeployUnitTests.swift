import Foundation
import Testing

/// The repository's root, from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
  .deletingLastPathComponent().deletingLastPathComponent()

@Suite("deploy/systemd units")
struct DeployUnitTests {
  static let analyzer = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first {
    FileManager.default.isExecutableFile(atPath: $0)
  }

  @Test(
    "every unit passes systemd-analyze verify without a warning (the binary path swapped for one that exists)",
    .enabled(if: analyzer != nil, "systemd-analyze is not installed on this host"))
  func verify() throws {
    let units = ["hkv-coordinator.service", "hkv-memnode@.service", "hkv-worker.service"]
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent(
      "hkv-units-\(UUID())")
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: scratch) }
    var checked: [String] = []
    for unit in units {
      let text = try String(
        contentsOf: repositoryRoot.appendingPathComponent("deploy/systemd/\(unit)"), encoding: .utf8
      )
      #expect(text.contains("ExecStart=/usr/local/bin/hkv "), "\(unit)")
      #expect(text.contains("KillSignal=SIGTERM"), "\(unit)")
      #expect(text.contains("Restart=on-failure"), "\(unit)")
      #expect(text.contains("LoadCredential=token:"), "\(unit)")
      // verify refuses a missing binary; the rest of the unit is what is checked.
      let local = text.replacingOccurrences(
        of: "ExecStart=/usr/local/bin/hkv ", with: "ExecStart=/bin/true ")
      // A template is verified as an instance.
      let name = unit.replacingOccurrences(of: "@.service", with: "@mem-0.service")
      try local.write(to: scratch.appendingPathComponent(name), atomically: true, encoding: .utf8)
      checked.append(scratch.appendingPathComponent(name).path)
    }
    let memoryNode = try String(
      contentsOf: repositoryRoot.appendingPathComponent("deploy/systemd/hkv-memnode@.service"),
      encoding: .utf8)
    #expect(memoryNode.contains("LimitMEMLOCK=infinity"))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Self.analyzer!)
    process.arguments = ["verify"] + checked
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(stderr)")
    // Unknown keys and bad values are warnings with status 0: none may appear.
    #expect(stdout.isEmpty && stderr.isEmpty, "\(stdout)\(stderr)")
  }
}
