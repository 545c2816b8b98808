import HeteroKVCore

/// GPT-2-style byte-level BPE, as SmolLM2's GGUF stores it (`tokenizer.ggml.model` gpt2,
/// pre-tokenizer `smollm`): text is cut into pieces (control tokens whole, each digit alone,
/// then contractions, letter runs, digit runs, punctuation runs and whitespace), each piece's
/// UTF-8 bytes are mapped to printable characters, and the ranked merges join them into
/// vocabulary entries. Decoding maps the characters back to bytes, so text round-trips.
public struct BPETokenizer: Sendable {
  /// Entries by id.
  public let tokens: [String]
  let ids: [String: Int]
  let ranks: [Pair: Int]
  /// Control tokens (`<|im_start|>`...) matched whole in text.
  let specials: [(text: String, id: Int)]
  public let bosID: Int
  public let eosID: Int
  let byteToChar: [Character]
  let charToByte: [Character: UInt8]

  struct Pair: Hashable {
    var a: String
    var b: String
  }

  /// From a GGUF file's tokenizer metadata.
  public init(gguf: GGUFFile) throws(HeteroKVError) {
    guard try gguf.require("tokenizer.ggml.model").string == "gpt2" else {
      throw HeteroKVError(
        .malformedInput, "\(gguf.path): only gpt2 (byte-level BPE) tokenizers are supported")
    }
    guard let list = try gguf.require("tokenizer.ggml.tokens").array?.compactMap(\.string),
      let merges = try gguf.require("tokenizer.ggml.merges").array?.compactMap(\.string)
    else {
      throw HeteroKVError(
        .malformedInput, "\(gguf.path): tokenizer tokens or merges are not strings")
    }
    let types = gguf.metadata["tokenizer.ggml.token_type"]?.array?.compactMap(\.int) ?? []
    try self.init(
      tokens: list, merges: merges, types: types,
      bos: gguf.metadata["tokenizer.ggml.bos_token_id"]?.int ?? 1,
      eos: gguf.metadata["tokenizer.ggml.eos_token_id"]?.int ?? 2)
  }

  /// From a vocabulary, merges ("a b", best first) and token types (3: control).
  public init(tokens: [String], merges: [String], types: [Int], bos: Int, eos: Int)
    throws(HeteroKVError)
  {
    self.tokens = tokens
    var ids: [String: Int] = [:]
    for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = i }
    self.ids = ids
    var ranks: [Pair: Int] = [:]
    for (rank, merge) in merges.enumerated() {
      let parts = merge.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
      guard parts.count == 2 else {
        throw HeteroKVError(.malformedInput, "merge \(rank) \"\(merge)\" is not two symbols")
      }
      ranks[Pair(a: String(parts[0]), b: String(parts[1]))] = rank
    }
    self.ranks = ranks
    specials = types.enumerated().compactMap { i, t in
      (t == 3 || t == 4) && i < tokens.count && !tokens[i].isEmpty ? (tokens[i], i) : nil
    }.sorted { $0.text.count > $1.text.count }
    bosID = bos
    eosID = eos
    // Printable bytes stand for themselves; the rest move to U+0100 and up, in order.
    var map = [Character](repeating: " ", count: 256)
    var next = 0
    for b in 0..<256 {
      let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
      map[b] = Character(Unicode.Scalar(printable ? UInt32(b) : UInt32(256 + next))!)
      if !printable { next += 1 }
    }
    byteToChar = map
    var back: [Character: UInt8] = [:]
    for (b, c) in map.enumerated() { back[c] = UInt8(b) }
    charToByte = back
  }

  /// Token ids of `text` (no BOS added; SmolLM2's file says not to).
  public func encode(_ text: String) -> [Int] {
    var out: [Int] = []
    var rest = Substring(text)
    while !rest.isEmpty {
      // The earliest control token in what is left, if any.
      var cut: (range: Range<Substring.Index>, id: Int)?
      for special in specials {
        if let r = rest.range(of: special.text), cut == nil || r.lowerBound < cut!.range.lowerBound
        {
          cut = (r, special.id)
        }
      }
      let plain = cut.map { rest[..<$0.range.lowerBound] } ?? rest
      for piece in Self.pieces(plain) { out += bpe(piece) }
      guard let cut else { break }
      out.append(cut.id)
      rest = rest[cut.range.upperBound...]
    }
    return out
  }

  /// The text of `ids` (invalid UTF-8 shown as U+FFFD).
  public func decode(_ ids: [Int]) -> String {
    var bytes: [UInt8] = []
    for id in ids where id >= 0 && id < tokens.count {
      if specials.contains(where: { $0.id == id }) {
        bytes += Array(tokens[id].utf8)
        continue
      }
      for c in tokens[id] { if let b = charToByte[c] { bytes.append(b) } }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  func bpe(_ piece: String) -> [Int] {
    var symbols = piece.utf8.map { String(byteToChar[Int($0)]) }
    while symbols.count > 1 {
      var best = -1
      var bestRank = Int.max
      for i in 0..<(symbols.count - 1) {
        if let r = ranks[Pair(a: symbols[i], b: symbols[i + 1])], r < bestRank {
          bestRank = r
          best = i
        }
      }
      if best < 0 { break }
      symbols[best] += symbols[best + 1]
      symbols.remove(at: best + 1)
    }
    return symbols.flatMap { s -> [Int] in
      if let id = ids[s] { return [id] }
      // A symbol outside the vocabulary: its bytes one by one.
      return s.compactMap { ids[String($0)] }
    }
  }

  /// The pre-tokenizer, the regular expressions of llama.cpp's `smollm` pre-tokenizer applied
  /// by hand: first every digit alone (`\p{N}`), then in the text between
  /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
  static func pieces(_ text: Substring) -> [String] {
    let all = Array(text.unicodeScalars)
    func isNumber(_ c: Unicode.Scalar) -> Bool { c.properties.numericType != nil }
    func isLetter(_ c: Unicode.Scalar) -> Bool { c.properties.isAlphabetic && !isNumber(c) }
    func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
    func isOther(_ c: Unicode.Scalar) -> Bool { !isNumber(c) && !isLetter(c) && !isSpace(c) }
    var out: [String] = []
    func emit(_ range: Range<Int>) {
      var piece = String.UnicodeScalarView()
      piece.append(contentsOf: all[range])
      out.append(String(piece))
    }
    var i = 0
    while i < all.count {
      if isNumber(all[i]) {
        emit(i..<(i + 1))
        i += 1
        continue
      }
      // A segment up to the next digit.
      var end = i
      while end < all.count && !isNumber(all[end]) { end += 1 }
      var j = i
      while j < end {
        let c = all[j]
        func run(from k: Int, _ test: (Unicode.Scalar) -> Bool) -> Int {
          var m = k
          while m < end && test(all[m]) { m += 1 }
          return m
        }
        if c == "'", let n = contraction(all, j, end) {
          emit(j..<n)
          j = n
        } else if isLetter(c) || (c == " " && j + 1 < end && isLetter(all[j + 1])) {
          let n = run(from: c == " " ? j + 1 : j, isLetter)
          emit(j..<n)
          j = n
        } else if isOther(c) || (c == " " && j + 1 < end && isOther(all[j + 1])) {
          let n = run(from: c == " " ? j + 1 : j, isOther)
          emit(j..<n)
          j = n
        } else {
          // Whitespace: the run, less its last character when a non-space follows.
          var n = run(from: j, isSpace)
          if n < end && n - j > 1 { n -= 1 }
          emit(j..<n)
          j = n
        }
      }
      i = end
    }
    return out
  }

  /// The end of a contraction at `i` ('s 't 're 've 'm 'll 'd), or nil.
  static func contraction(_ s: [Unicode.Scalar], _ i: Int, _ end: Int) -> Int? {
    for c in ["'re", "'ve", "'ll", "'s", "'t", "'m", "'d"] {
      let u = Array(c.unicodeScalars)
      if i + u.count <= end && Array(s[i..<(i + u.count)]) == u { return i + u.count }
    }
    return nil
  }
}
