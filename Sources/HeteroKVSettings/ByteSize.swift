/// Sizes in bytes as people write them: `4GiB`, `512MiB`, `64KiB`, `10GB`, `1500000`.
/// Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB)
/// powers of 1000; a bare number is bytes.
public enum ByteSize {
  private static let units: [(String, Double)] = [
    ("KiB", 1024), ("MiB", 1024 * 1024), ("GiB", 1024 * 1024 * 1024),
    ("TiB", 1024 * 1024 * 1024 * 1024), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
    ("B", 1),
  ]

  /// The number of bytes `text` names, or nil when it is not a size.
  public static func parse(_ text: String) -> Int? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
      let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
      guard let value = Double(number), value >= 0, value.isFinite else { return nil }
      let bytes = value * factor
      guard bytes < 9e18, bytes == bytes.rounded() else { return nil }
      return Int(bytes)
    }
    return Int(trimmed).flatMap { $0 >= 0 ? $0 : nil }
  }

  /// `bytes` in the largest binary unit that keeps three significant figures.
  /// `format` for a byte count kept unsigned.
  public static func format(_ bytes: UInt64) -> String { format(Int(clamping: bytes)) }

  public static func format(_ bytes: Int) -> String {
    let value = Double(bytes)
    for (suffix, factor) in [
      ("TiB", 1024.0 * 1024 * 1024 * 1024), ("GiB", 1024.0 * 1024 * 1024), ("MiB", 1024.0 * 1024),
      ("KiB", 1024.0),
    ]
    where value >= factor {
      let scaled = value / factor
      return scaled >= 100
        ? "\(Int(scaled.rounded())) \(suffix)" : "\((scaled * 100).rounded() / 100) \(suffix)"
    }
    return "\(bytes) B"
  }
}

import Foundation
