import Synchronization

/// Trained codebooks and the prefill coded with them, by what they were trained for, so
/// policies that differ only in how they use the codes (HCAttention's output modes) train and
/// encode once.
public final class ProductCodebookCache: Sendable {
  struct Key: Hashable {
    var version: CodebookVersion
    var configuration: ProductQuantizerConfiguration
  }
  private let books = Mutex<[Key: ProductQuantizedKeyStore]>([:])

  public init() {}

  /// A store holding `keys` coded with a codebook trained on them (own-prefill calibration),
  /// from the cache when the same keys were coded before.
  public func prefillStore(
    keys: HalfMatrix, configuration: ProductQuantizerConfiguration, version: CodebookVersion
  ) throws -> ProductQuantizedKeyStore {
    let key = Key(version: version, configuration: configuration)
    if let store = books.withLock({ $0[key] }) { return store }
    let book = try ProductCodebook.train(keys: keys, configuration: configuration, version: version)
    var store = ProductQuantizedKeyStore(codebook: book)
    try store.append(keys)
    books.withLock { $0[key] = store }
    return store
  }

  /// Drops every cached codebook.
  public func removeAll() { books.withLock { $0.removeAll() } }
}
