import Synchronization

/// Trained codebooks and the prefill coded with them, by what they were trained for, so
/// policies that differ only in how they use the codes (HCAttention's output modes) train and
/// encode once.
public final class ProductCodebookCache: Sendable {
  struct Key: Hashable {
    var version: CodebookVersion
    var configuration: ProductQuantizerConfiguration
    var transform: QueryMomentTransform?
  }
  private let books = Mutex<[Key: ProductQuantizedKeyStore]>([:])

  public init() {}

  /// A store holding `keys` coded with a codebook trained on `trainingKeys` (the keys
  /// themselves for own-prefill calibration), in `transform`'s space when one is given, from
  /// the cache when the same keys were coded before.
  public func prefillStore(
    keys: HalfMatrix, trainingKeys: HalfMatrix? = nil,
    configuration: ProductQuantizerConfiguration, version: CodebookVersion,
    transform: QueryMomentTransform? = nil
  ) throws -> ProductQuantizedKeyStore {
    let key = Key(version: version, configuration: configuration, transform: transform)
    if let store = books.withLock({ $0[key] }) { return store }
    let book = try ProductCodebook.train(
      keys: trainingKeys ?? keys, configuration: configuration, version: version,
      transform: transform)
    var store = ProductQuantizedKeyStore(codebook: book)
    try store.append(keys)
    books.withLock { $0[key] = store }
    return store
  }

  /// Drops every cached codebook.
  public func removeAll() { books.withLock { $0.removeAll() } }
}

/// Keys of a calibration sample, one layer at a time, shared by the policies that train
/// codebooks on it (the layer being evaluated is loaded once, not once per policy).
public final class CalibrationKeys: Sendable {
  /// The sample's name, recorded in codebook versions.
  public let name: String
  private let sample: any AttentionWorkload
  private let current = Mutex<LayerTrace?>(nil)

  public init(sample: any AttentionWorkload) {
    self.sample = sample
    self.name = sample.summary
  }

  /// Prefill keys of `kvHead` in `layer` of the sample.
  public func keys(layer: Int, kvHead: Int) throws -> HalfMatrix {
    if let trace = current.withLock({ $0 }), trace.layer == layer {
      return trace.heads[kvHead].keys
    }
    let trace = try sample.layer(layer)
    current.withLock { $0 = trace }
    return trace.heads[kvHead].keys
  }
}
