import HeteroKVWire

extension Heterokv_V1_SequenceStats {
  /// The share of the context a query head's decode step attended, on average (the wire
  /// form of `SequenceStats.keptShare`).
  public var keptShare: Double {
    contextTokens > 0 ? Double(keptTokens) / Double(contextTokens) : 0
  }

  /// Bytes moved per decode step, on average (the wire form of
  /// `SequenceStats.decodeBytesPerStep`).
  public var decodeBytesPerStep: Double {
    decodeSteps > 0 ? Double(decodeBytesMoved) / Double(decodeSteps) : 0
  }
}
