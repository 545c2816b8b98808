/// Passkey retrieval prompts: a random number hidden at a chosen depth of filler text, asked
/// for at the end (the long-context check of the HeteroCache and HCAttention papers).
public struct PasskeyPrompt: Sendable, Hashable {
  /// The hidden number.
  public var passkey: Int
  /// The whole prompt.
  public var text: String

  static let intro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n"
  static let filler =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
  static let question = "\nWhat is the pass key? The pass key is"

  /// The sentences that hide `passkey`.
  static func needle(_ passkey: Int) -> String {
    "The pass key is \(passkey). Remember it. \(passkey) is the pass key. "
  }

  /// A prompt of about `tokens` tokens (by `tokenizer`) with `passkey` at `depth` (0...1) of
  /// the filler.
  public init(tokens: Int, depth: Double, passkey: Int, tokenizer: BPETokenizer) {
    let needle = Self.needle(passkey)
    let fixed = tokenizer.encode(Self.intro + needle + Self.question).count
    let per = tokenizer.encode(Self.filler).count
    let repeats = max(1, (tokens - fixed) / max(1, per))
    let at = Int((Double(repeats) * min(max(depth, 0), 1)).rounded())
    self.passkey = passkey
    text =
      Self.intro + String(repeating: Self.filler, count: at) + needle
      + String(repeating: Self.filler, count: repeats - at) + Self.question
  }

  /// A prompt of about `tokens` tokens with `passkey` at `depth` (0...1) of `haystack`, a real
  /// text (repeated when shorter than needed) cut to length by tokens; the needle goes in at
  /// the first sentence or line end at or after the depth (within 64 tokens of it).
  public init(tokens: Int, depth: Double, passkey: Int, tokenizer: BPETokenizer, haystack: String) {
    let needle = Self.needle(passkey)
    let fixed = tokenizer.encode(Self.intro + needle + Self.question).count
    let wanted = max(1, tokens - fixed)
    let own = tokenizer.encode(haystack)
    var ids = own
    while !own.isEmpty && ids.count < wanted { ids += own }
    ids = Array(ids.prefix(wanted))
    var at = Int((Double(ids.count) * min(max(depth, 0), 1)).rounded())
    if let end = (at..<min(ids.count, at + 64)).first(where: { i in
      let piece = tokenizer.decode([ids[i]])
      return piece.hasSuffix(".") || piece.hasSuffix("\n")
    }) {
      at = end + 1
    }
    self.passkey = passkey
    text =
      Self.intro + tokenizer.decode(Array(ids[..<at])) + " " + needle
      + tokenizer.decode(Array(ids[at...])) + Self.question
  }

  /// Whether generated text answers with the passkey.
  public func isAnswered(by output: String) -> Bool {
    output.drop(while: \.isWhitespace).hasPrefix(String(passkey))
  }
}
