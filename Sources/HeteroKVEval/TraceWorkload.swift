import Foundation
import HeteroKVCore

/// A real attention trace on disk (docs/trace-format.md): a manifest and NumPy files per layer.
public struct TraceWorkload: AttentionWorkload {
  public init(directory: URL) throws {
    throw HeteroKVError(.malformedInput, "not yet")
  }
  public var geometry: ModelGeometry { fatalError() }
  public var contextLength: Int { 0 }
  public var decodeSteps: Int { 0 }
  public var observationWindow: Int { 0 }
  public var summary: String { "" }
  public func layer(_ index: Int) throws -> LayerTrace { fatalError() }
  public func calibrationSample() throws -> (any AttentionWorkload)? { nil }
}
