import HeteroKVCore
import HeteroKVTransport
import HeteroKVWire
import NIOCore

/// What a node stores about one shard.
public struct ShardSummary: Sendable, Hashable {
  /// The shard.
  public var shard: ShardID
  /// Head dimension of its rows.
  public var headDim: Int
  /// Token position of its first row.
  public var startToken: UInt32
  /// Rows stored.
  public var rowCount: Int
  /// Whether keys are stored with the values.
  public var hasKeys: Bool
  /// Bytes of pages it holds.
  public var pageBytes: Int
}

/// The rows of one shard in pages: values, and keys when the shard keeps them. Row `i` (token
/// `startToken + i`) sits in page `i / rowsPerPage` at row `i % rowsPerPage`.
final class ShardRows {
  let headDim: Int
  let hasKeys: Bool
  let startToken: UInt32
  let rowsPerPage: Int
  var rowCount = 0
  var valuePages: [Page] = []
  var keyPages: [Page] = []

  init(headDim: Int, hasKeys: Bool, startToken: UInt32, rowsPerPage: Int) {
    self.headDim = headDim
    self.hasKeys = hasKeys
    self.startToken = startToken
    self.rowsPerPage = rowsPerPage
  }

  var rowBytes: Int { headDim * 2 }
  var pageCount: Int { valuePages.count + keyPages.count }
  var endToken: UInt64 { UInt64(startToken) + UInt64(rowCount) }

  func pagesNeeded(forRows total: Int) -> Int {
    (total + rowsPerPage - 1) / rowsPerPage
  }

  /// Pointers to the rows at local indices `locals` in `pages` (keys or values), in order.
  /// A row's page is found by division only when it leaves the page of the row before: a
  /// step's kept tokens ascend, so a 2,800-row request divides a few times, not 2,800 (the
  /// divisions were a third of a node's time outside the kernels).
  func rows(_ pages: [Page], _ locals: [Int]) -> [UnsafePointer<UInt16>?] {
    let perPage = rowsPerPage
    let bytes = rowBytes
    return [UnsafePointer<UInt16>?](unsafeUninitializedCapacity: locals.count) { out, written in
      pages.withUnsafeBufferPointer { pages in
        var first = 0  // local index of the current page's first row
        var base = pages.isEmpty ? nil : pages[0].base
        for (i, local) in locals.enumerated() {
          if local < first || local >= first &+ perPage {
            first = local - local % perPage
            base = pages[local / perPage].base
          }
          out[i] = UnsafePointer(
            (base! + (local &- first) &* bytes).assumingMemoryBound(to: UInt16.self))
        }
      }
      written = locals.count
    }
  }

  /// Copies `count` rows from `source` into `pages` starting at local row `first`.
  func copyRows(_ source: UnsafeRawBufferPointer, into pages: [Page], first: Int, count: Int) {
    var copied = 0
    while copied < count {
      let local = first + copied
      let inPage = min(rowsPerPage - local % rowsPerPage, count - copied)
      let destination = pages[local / rowsPerPage].base + (local % rowsPerPage) * rowBytes
      destination.copyMemory(
        from: source.baseAddress! + copied * rowBytes, byteCount: inPage * rowBytes)
      copied += inPage
    }
  }
}

/// Every shard a memory node holds, in pages from its ``PagePool``. Puts and drops take the
/// write lock; gathers, partial attention and statistics share the read lock. Every request is
/// checked completely before anything changes, so a rejected request leaves the store as it
/// was.
public final class ShardStore: @unchecked Sendable {
  /// The pool pages come from.
  public let pool: PagePool
  /// Bounds on what one response may carry.
  public let limits: DataPlaneLimits

  private let lock = ReadWriteLock()
  private var shards: [ShardID: ShardRows] = [:]
  private var storedBytes = 0
  /// Row bytes per namespace, for tenants' quotas.
  private var bytesByNamespace: [UInt32: Int] = [:]
  private var rows = 0

  /// A store over `pool`.
  public init(pool: PagePool, limits: DataPlaneLimits = .standard) {
    self.pool = pool
    self.limits = limits
  }

  // MARK: Put and drop

  /// Appends a batch of rows to a shard, all or none; with a `quota`, only while the
  /// tenant's namespaces (every namespace when the grant names none) stay within it.
  public func put(_ request: PutRequest, quota grant: DataPlaneGrant? = nil)
    throws(HeteroKVError) -> PutResponse
  {
    let d = request.headDim
    let hasKeys = request.keys != nil
    guard d * 2 <= pool.pageBytes else {
      throw HeteroKVError(
        .invalidArgument,
        "put: rows of \(d * 2) bytes do not fit pages of \(pool.pageBytes) bytes")
    }
    return try lock.withWriteLock { () throws(HeteroKVError) -> PutResponse in
      let existing = shards[request.shard]
      let target =
        existing
        ?? ShardRows(
          headDim: d, hasKeys: hasKeys, startToken: request.startToken,
          rowsPerPage: pool.pageBytes / (d * 2))
      if let existing {
        guard existing.headDim == d else {
          throw HeteroKVError(
            .dimensionMismatch,
            "put: \(request.shard) has head dimension \(existing.headDim), the batch \(d)")
        }
        guard existing.hasKeys == hasKeys else {
          throw HeteroKVError(
            .dimensionMismatch,
            "put: \(request.shard) \(existing.hasKeys ? "stores" : "does not store") keys; the batch \(hasKeys ? "has" : "has no") keys"
          )
        }
        guard UInt64(request.startToken) == existing.endToken else {
          throw PutRequest.misplacedStart(
            shard: request.shard, holds: UInt64(existing.startToken), to: existing.endToken,
            got: request.startToken)
        }
      }
      let adding = request.rowCount * target.rowBytes * (hasKeys ? 2 : 1)
      if let grant, let quota = grant.quotaBytes {
        let used =
          grant.namespaces.map { $0.reduce(0) { $0 + (bytesByNamespace[$1] ?? 0) } }
          ?? storedBytes
        guard used + adding <= quota else {
          throw HeteroKVError(
            .resourceExhausted,
            "put: tenant \(grant.tenant) holds \(used) bytes on this node; \(adding) more exceed its quota of \(quota)"
          )
        }
      }
      let total = target.rowCount + request.rowCount
      let perKind = target.pagesNeeded(forRows: total) - target.valuePages.count
      let needed = perKind * (hasKeys ? 2 : 1)
      guard let pages = pool.allocate(needed) else {
        throw HeteroKVError(
          .resourceExhausted,
          "put: \(request.rowCount) rows for \(request.shard) need \(needed) more pages of \(pool.pageBytes) bytes; \(pool.maxPages - pool.pagesInUse) of \(pool.maxPages) are free (capacity \(pool.capacityBytes) bytes)"
        )
      }
      target.valuePages += pages[0..<perKind]
      if hasKeys { target.keyPages += pages[perKind...] }
      let first = target.rowCount
      request.values.withUnsafeReadableBytes {
        target.copyRows($0, into: target.valuePages, first: first, count: request.rowCount)
      }
      if let keys = request.keys {
        keys.withUnsafeReadableBytes {
          target.copyRows($0, into: target.keyPages, first: first, count: request.rowCount)
        }
      }
      target.rowCount = total
      shards[request.shard] = target
      storedBytes += adding
      bytesByNamespace[request.shard.namespace, default: 0] += adding
      rows += request.rowCount
      return PutResponse(
        shardRows: UInt32(total), usedBytes: UInt64(pool.usedBytes),
        capacityBytes: UInt64(pool.capacityBytes))
    }
  }

  /// Drops a shard, a sequence or a namespace and returns its pages to the pool.
  public func drop(_ request: DropRequest) throws(HeteroKVError) -> DropResponse {
    let id = request.shard
    return try lock.withWriteLock { () throws(HeteroKVError) -> DropResponse in
      let victims: [ShardID]
      switch request.scope {
      case .shard:
        guard shards[id] != nil else { throw unknown(id) }
        victims = [id]
      case .sequence:
        victims = shards.keys.filter { $0.namespace == id.namespace && $0.sequence == id.sequence }
        guard !victims.isEmpty else {
          throw HeteroKVError(
            .unknownSequence,
            "drop: no shard of sequence \(id.sequence) in namespace \(id.namespace)")
        }
      case .namespace:
        victims = shards.keys.filter { $0.namespace == id.namespace }
      }
      var freed = 0
      for victim in victims {
        guard let rows = shards.removeValue(forKey: victim) else { continue }
        freed += rows.pageCount * pool.pageBytes
        let bytes = rows.rowCount * rows.rowBytes * (rows.hasKeys ? 2 : 1)
        storedBytes -= bytes
        bytesByNamespace[victim.namespace, default: 0] -= bytes
        if bytesByNamespace[victim.namespace] == 0 { bytesByNamespace[victim.namespace] = nil }
        self.rows -= rows.rowCount
        pool.release(rows.valuePages + rows.keyPages)
      }
      return DropResponse(shardsDropped: UInt32(victims.count), bytesFreed: UInt64(freed))
    }
  }

  // MARK: Reads

  /// The encoded response to a gather: the chosen rows, copied from their pages straight into
  /// the response buffer.
  public func gather(_ request: GatherRequest, allocator: ByteBufferAllocator)
    throws(HeteroKVError)
    -> ByteBuffer
  {
    try lock.withReadLock { () throws(HeteroKVError) -> ByteBuffer in
      guard let shard = shards[request.shard] else { throw unknown(request.shard) }
      if request.includeKeys && !shard.hasKeys {
        throw HeteroKVError(
          .invalidArgument, "gather: \(request.shard) stores values only; keys were asked for")
      }
      let n = request.tokens.count
      let kinds = request.includeKeys ? 2 : 1
      let bytes = n * shard.rowBytes * kinds
      guard bytes + 8 <= limits.maxPayloadBytes else {
        throw HeteroKVError(
          .invalidArgument,
          "gather: \(n) rows (\(bytes) bytes) exceed the frame limit of \(limits.maxPayloadBytes) bytes"
        )
      }
      let locals = try localRows(request.tokens, in: shard, request.shard, what: "gather")
      var out = allocator.buffer(capacity: 8 + bytes)
      out.writeInteger(UInt32(n), endianness: .little)
      out.writeInteger(UInt16(shard.headDim), endianness: .little)
      out.writeInteger(UInt16(request.includeKeys ? 1 : 0), endianness: .little)
      for pages in request.includeKeys ? [shard.valuePages, shard.keyPages] : [shard.valuePages] {
        let pointers = shard.rows(pages, locals)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: n * shard.rowBytes) { raw in
          Kernels.gatherRows(
            pointers, cols: shard.headDim,
            into: raw.baseAddress!.assumingMemoryBound(to: UInt16.self))
          return n * shard.rowBytes
        }
      }
      return out
    }
  }

  /// Attention over chosen rows, per query head, as a mergeable partial (see
  /// ``PartialAttentionRequest``).
  public func partialAttention(_ request: PartialAttentionRequest) throws(HeteroKVError)
    -> PartialAttentionResponse
  {
    try lock.withReadLock { () throws(HeteroKVError) -> PartialAttentionResponse in
      guard let shard = shards[request.shard] else { throw unknown(request.shard) }
      let d = shard.headDim
      guard request.headDim == d else {
        throw HeteroKVError(
          .dimensionMismatch,
          "partial attention: \(request.shard) has head dimension \(d), the request \(request.headDim)"
        )
      }
      if request.mode == .exact && !shard.hasKeys {
        throw HeteroKVError(
          .invalidArgument,
          "partial attention: exact mode needs keys, and \(request.shard) stores values only")
      }
      // Heads that name the same tokens (a GQA group sending the union of its kept sets) are
      // served together: their rows are resolved and read from the pages once, copied
      // contiguous, and every head of the group is scored and summed over the copy in one pass
      // of the kernels. Every head is checked before any is computed.
      // Found by comparing lists, not hashing them: heads decoded from one shared list share
      // its storage, so equal lists compare in constant time.
      var tokenLists: [[UInt32]] = []
      var groups: [[Int]] = []
      for (h, head) in request.heads.enumerated() {
        if request.mode == .weights && head.weights.count != head.tokens.count {
          throw HeteroKVError(
            .dimensionMismatch,
            "partial attention: head \(h) has \(head.tokens.count) tokens and \(head.weights.count) weights"
          )
        }
        guard !head.tokens.isEmpty else { continue }
        if let g = tokenLists.firstIndex(where: { $0 == head.tokens }) {
          groups[g].append(h)
        } else {
          tokenLists.append(head.tokens)
          groups.append([h])
        }
      }
      var order: [(rows: [Int], members: [Int])] = []
      for (tokens, members) in zip(tokenLists, groups) {
        order.append(
          (
            try localRows(
              tokens, in: shard, request.shard, what: "partial attention head \(members[0])"),
            members
          ))
      }
      var result = AttentionPartial.empty(heads: request.heads.count, headDim: d)
      for (rows, members) in order {
        let n = rows.count
        // Rows read in place in the pages (under the read lock), not copied out first.
        let values = shard.rows(shard.valuePages, rows)
        let part: AttentionPartial
        do {
          switch request.mode {
          case .weights:
            part = try .weighted(
              members.flatMap { request.heads[$0].weights }, heads: members.count,
              valueRows: values, cols: d)
          case .exact:
            let keys = shard.rows(shard.keyPages, rows)
            part = try .exact(
              queries: members.flatMap { request.heads[$0].query }, heads: members.count,
              keyRows: keys, valueRows: values, cols: d, scale: request.scale)
          }
        } catch {
          throw HeteroKVError(
            .internalError, "partial attention over \(n) rows of \(request.shard): \(error)",
            cause: error)
        }
        for (g, h) in members.enumerated() {
          result.maxScores[h] = part.maxScores[g]
          result.sumExps[h] = part.sumExps[g]
          result.outputs.replaceSubrange(h * d..<(h + 1) * d, with: part.output(head: g))
        }
      }
      return PartialAttentionResponse(
        headDim: d, maxScores: result.maxScores, sumExps: result.sumExps, outputs: result.outputs)
    }
  }

  /// Page bytes in use, row bytes stored and shard count: constant time, for the gauges
  /// updated after every put and drop (``stats()`` also counts distinct sequences).
  public func usage() -> (usedBytes: Int, storedBytes: Int, shardCount: Int) {
    lock.withReadLock { (pool.usedBytes, storedBytes, shards.count) }
  }

  /// Capacity, use and counts.
  public func stats() -> StatsResponse {
    lock.withReadLock {
      let sequences = Set(shards.keys.map { [UInt64($0.namespace), $0.sequence] })
      return StatsResponse(
        capacityBytes: UInt64(pool.capacityBytes), usedBytes: UInt64(pool.usedBytes),
        storedBytes: UInt64(storedBytes), shardCount: UInt32(shards.count),
        sequenceCount: UInt32(sequences.count), rowCount: UInt64(rows))
    }
  }

  /// The shards stored, sorted by id; of one sequence when `sequence` is given.
  public func summaries(namespace: UInt32? = nil, sequence: UInt64? = nil) -> [ShardSummary] {
    lock.withReadLock {
      shards.filter { id, _ in
        (namespace == nil || id.namespace == namespace!)
          && (sequence == nil || id.sequence == sequence!)
      }
      .map { id, rows in
        ShardSummary(
          shard: id, headDim: rows.headDim, startToken: rows.startToken, rowCount: rows.rowCount,
          hasKeys: rows.hasKeys, pageBytes: rows.pageCount * pool.pageBytes)
      }
      .sorted { $0.shard < $1.shard }
    }
  }

  // MARK: Helpers

  private func localRows(_ tokens: [UInt32], in shard: ShardRows, _ id: ShardID, what: String)
    throws(HeteroKVError) -> [Int]
  {
    var locals = [Int](repeating: 0, count: tokens.count)
    let start = UInt64(shard.startToken)
    let end = shard.endToken
    for (i, t) in tokens.enumerated() {
      let token = UInt64(t)
      guard token >= start && token < end else {
        throw HeteroKVError(
          .indexOutOfRange,
          "\(what): token \(t) is outside the rows of \(id) (tokens \(start)..<\(end))")
      }
      locals[i] = Int(token - start)
    }
    return locals
  }

  private func unknown(_ id: ShardID) -> HeteroKVError {
    let sequenceKnown = shards.keys.contains {
      $0.namespace == id.namespace && $0.sequence == id.sequence
    }
    return sequenceKnown
      ? HeteroKVError(.unknownShard, "no shard \(id) on this node")
      : HeteroKVError(
        .unknownSequence,
        "no shard of sequence \(id.sequence) in namespace \(id.namespace) on this node")
  }
}
