import Foundation
import HeteroKVCore

/// One row of `hkv eval`: one policy at one memory budget.
public struct EvalRow: Sendable, Codable, Hashable {
  /// Policy name.
  public var policy: String
  /// Memory budget requested, as a share of fp16 K+V.
  public var budget: Double
  /// "ok", or why the policy has no configuration at this budget.
  public var status: String
  /// Mean over layers, KV heads' query heads and steps of ‖o − o_full‖ / ‖o_full‖.
  public var relativeL2Error: Double?
  /// Mean cosine similarity with the full-attention output.
  public var cosineSimilarity: Double?
  /// Mean share of the true softmax mass held by the tokens the output used.
  public var massRecall: Double?
  /// Bytes resident on the worker per token, as a share of fp16 K+V, after the last step.
  public var residentFraction: Double?
  /// Mean share of tokens whose values entered an output.
  public var keptFraction: Double?
  /// Bytes moved between worker and memory tier per decode step (all layers and heads).
  public var bytesMovedPerStep: Double?
  /// HeteroCache: head counts by role.
  public var roles: [String: Int]?
  /// HeteroCache: share of (layer, step) pairs at which a pivot refreshed its satellites.
  public var retrievalShare: Double?
  /// Wall-clock seconds the policy took (prepare and decode).
  public var seconds: Double?

  public init(policy: String, budget: Double, status: String) {
    self.policy = policy
    self.budget = budget
    self.status = status
  }
}

/// The result of a harness run: what was measured and one row per policy and budget.
public struct EvalReport: Sendable, Codable {
  public var workload: String
  public var geometry: ModelGeometry
  public var contextLength: Int
  public var decodeSteps: Int
  /// HCAttention's tau.
  public var tau: Double
  /// HeteroCache's tau, where it differs from `tau`.
  public var heteroCacheTau: Double?
  public var rows: [EvalRow]

  /// The rows as JSON (an array of row objects, documented in docs/eval.md).
  public func json(pretty: Bool = true) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
    return String(decoding: try encoder.encode(rows), as: UTF8.self)
  }

  /// A readable table.
  public func table() -> String {
    var lines = [
      "workload: \(workload)",
      "tau \(tau.formatted3)"
        + (heteroCacheTau.map { " (hcattention), \($0.formatted3) (heterocache)" } ?? "")
        + "; error and recall are means over layers, query heads and \(decodeSteps) decode steps",
      "",
    ]
    let header = [
      "policy", "budget", "rel-L2", "cosine", "recall", "resident", "kept", "moved/step", "note",
    ]
    var cells: [[String]] = [header]
    for r in rows {
      func f(_ v: Double?, _ digits: Int = 4) -> String {
        v.map { String(format: "%.\(digits)f", $0) } ?? "-"
      }
      var note = r.status == "ok" ? "" : r.status
      if let roles = r.roles {
        note =
          ["anchor", "satellite", "pivot", "volatile"].map { "\($0) \(roles[$0] ?? 0)" }.joined(
            separator: ", ")
        if let share = r.retrievalShare {
          note += String(format: "; retrieval %.1f%%", share * 100)
        }
      }
      cells.append([
        r.policy, String(format: "%.4g", r.budget), f(r.relativeL2Error), f(r.cosineSimilarity),
        f(r.massRecall), f(r.residentFraction), f(r.keptFraction),
        r.bytesMovedPerStep.map(Self.bytes) ?? "-", note,
      ])
    }
    let widths = (0..<header.count).map { c in cells.map { $0[c].count }.max()! }
    for row in cells {
      lines.append(
        row.enumerated().map { c, s in
          c == row.count - 1 ? s : s.padding(toLength: widths[c], withPad: " ", startingAt: 0)
        }.joined(separator: "  "))
    }
    return lines.joined(separator: "\n")
  }

  static func bytes(_ b: Double) -> String {
    if b >= 1_048_576 { return String(format: "%.1f MiB", b / 1_048_576) }
    if b >= 1024 { return String(format: "%.1f KiB", b / 1024) }
    return String(format: "%.0f B", b)
  }
}

extension Double {
  /// At most three decimals, trailing zeros dropped (0.975, 0.9).
  fileprivate var formatted3: String {
    var text = String(format: "%.3f", self)
    while text.hasSuffix("0") { text.removeLast() }
    if text.hasSuffix(".") { text.removeLast() }
    return text
  }
}
