extension Duration {
  /// The duration in seconds, as the reports and benchmarks print timings.
  public var inSeconds: Double {
    Double(components.seconds) + Double(components.attoseconds) * 1e-18
  }
}
