extension Duration {
  /// The duration in seconds, as the reports and benchmarks print timings.
  public var inSeconds: Double {
    Double(components.seconds) + Double(components.attoseconds) * 1e-18
  }

  /// Whole nanoseconds, saturating: for metrics timers and NIO deadlines.
  public var nanoseconds: Int64 {
    let (s, a) = components
    let ns = s.multipliedReportingOverflow(by: 1_000_000_000)
    return ns.overflow ? .max : ns.partialValue &+ a / 1_000_000_000
  }
}
