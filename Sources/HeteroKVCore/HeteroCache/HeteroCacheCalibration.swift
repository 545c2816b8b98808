/// Profiles every head of a workload the way HeteroCache's calibration does: full attention of
/// the last query at prefill and of each decode step's query, fed to a `HeadProfiler` per layer.
public enum HeteroCacheCalibration {
  /// Head profiles of all layers of `workload`; `progress` is called after each layer.
  public static func profile(
    _ workload: any AttentionWorkload, configuration: HeteroCacheConfiguration,
    progress: (Int) -> Void = { _ in }
  ) throws -> [HeadProfile] {
    let geometry = workload.geometry
    let g = geometry.groupSize
    var profiles: [HeadProfile] = []
    for l in 0..<geometry.layers {
      let layer = try workload.layer(l)
      var profiler = HeadProfiler(
        layer: l, kvHeads: geometry.kvHeads, groupSize: g, configuration: configuration)
      let prefill = try parallelMap(layer.heads.count) { h in
        let head = layer.heads[h]
        return try FullAttention.probabilities(
          queries: head.lastQuery(groupSize: g), heads: g, keys: head.keys)
      }
      try profiler.recordPrefill(prefill)
      let perHead = try parallelMap(layer.heads.count) { h in
        let head = layer.heads[h]
        var keys = head.keys
        var steps: [[Float]] = []
        for t in 0..<head.decodeQueries.count {
          try keys.append(head.decodeKeys[t])
          steps.append(
            try FullAttention.probabilities(queries: head.decodeQueries[t], heads: g, keys: keys))
        }
        return steps
      }
      for t in 0..<workload.decodeSteps { try profiler.recordDecode(perHead.map { $0[t] }) }
      profiles += try profiler.profiles()
      progress(l)
    }
    return profiles
  }
}
