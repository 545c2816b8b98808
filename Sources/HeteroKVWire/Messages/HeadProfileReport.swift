import GRPCCore
import HeteroKVCore

extension HeadProfile {
  /// A profile from the wire (a worker's report, an engine's calibration); a role that is
  /// not anchor, volatile, pivot or satellite, or an oversized similarity row, is an invalid
  /// argument naming the head.
  public init(_ report: Heterokv_V1_HeadProfileReport) throws(RPCError) {
    guard let role = HeadRole(name: report.role, pivot: Int(report.pivot)) else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "layer \(report.layer) head \(report.kvHead): role must be anchor, volatile, pivot or satellite, got \"\(report.role)\""
      )
    }
    guard report.similarity.count <= 1024 else {
      throw RPCError(code: .invalidArgument, message: "a similarity row has at most 1024 values")
    }
    self.init(
      layer: Int(report.layer), kvHead: Int(report.kvHead), stability: report.stability,
      similarity: report.similarity, role: role)
  }

  /// The wire form.
  public var report: Heterokv_V1_HeadProfileReport {
    .with {
      $0.layer = UInt32(layer)
      $0.kvHead = UInt32(kvHead)
      $0.stability = stability
      $0.similarity = similarity
      $0.role = role.name
      if case .satellite(let pivot) = role { $0.pivot = UInt32(pivot) }
    }
  }
}
