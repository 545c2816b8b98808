import Prometheus

/// What this build of HeteroKV is: the version `hkv --version` prints, every daemon's `ready`
/// line carries and the `hkv_build_info` metric labels.
public enum HeteroKVBuild {
  /// The release version.
  public static let version = "0.9.0"

  /// How the binary was compiled: its configuration and the Swift compiler.
  public static let build: String = {
    #if DEBUG
      let configuration = "debug"
    #else
      let configuration = "release"
    #endif
    #if compiler(>=6.3)
      let compiler = "swift-6.3"
    #else
      let compiler = "swift-6"
    #endif
    #if arch(x86_64)
      let arch = "x86_64"
    #elseif arch(arm64)
      let arch = "arm64"
    #else
      let arch = "other"
    #endif
    return "\(configuration) \(compiler) \(arch)"
  }()

  /// `0.9.0 (release swift-6.3 x86_64)`.
  public static var description: String { "\(version) (\(build))" }

  /// Registers `hkv_build_info{role, version, build} 1` in `registry`.
  public static func register(role: String, in registry: PrometheusCollectorRegistry) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "hkv", metricName: "build", unitName: "info",
        helpText: "The version and build of this process; always 1."),
      labels: [("role", role), ("version", version), ("build", build)]
    ).set(Double(1))
  }
}
