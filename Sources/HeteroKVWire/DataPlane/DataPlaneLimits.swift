/// Bounds on what one data-plane frame may ask for. Each side checks them before it allocates
/// anything a frame implies, so a hostile or broken peer cannot make it reserve memory.
public struct DataPlaneLimits: Sendable, Hashable {
  /// Largest payload accepted, in bytes (the header's length field is checked against it).
  public var maxPayloadBytes: Int
  /// Largest head dimension.
  public var maxHeadDim: Int
  /// Most query heads in one partial-attention request.
  public var maxQueryHeads: Int
  /// Longest error message kept from an error frame, in bytes.
  public var maxErrorMessageBytes: Int
  /// Most query heads x tokens in one partial-attention request (the score cells a node
  /// computes and holds: 4 bytes each).
  public var maxAttentionCells: Int

  /// Limits from explicit values.
  public init(
    maxPayloadBytes: Int = 64 << 20, maxHeadDim: Int = 1024, maxQueryHeads: Int = 128,
    maxErrorMessageBytes: Int = 4096, maxAttentionCells: Int = 1 << 24
  ) {
    self.maxAttentionCells = maxAttentionCells
    self.maxPayloadBytes = maxPayloadBytes
    self.maxHeadDim = maxHeadDim
    self.maxQueryHeads = maxQueryHeads
    self.maxErrorMessageBytes = maxErrorMessageBytes
  }

  /// 64 MiB frames, head dims up to 1024, up to 128 query heads and 16M heads x tokens
  /// (64 MiB of scores) per request.
  public static let standard = DataPlaneLimits()
}
