import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

// Appending a layer's K/V: coding keys, caching, queueing rows for the memory tier.
extension SequenceSession {
  // MARK: Append

  /// Appends `tokens` rows of K/V `[tokens][kvHeads][d]` to `layer`.
  func append(
    layer: Int, tokens: Int, keys: [Float16], values: [Float16], observation: [Float]?
  ) async throws(HeteroKVError) -> Int {
    await enter()
    defer { leave() }
    try checkUsable()
    let g = geometry
    try checkLayer(layer)
    let width = g.kvHeads * g.headDim
    guard tokens > 0, keys.count == tokens * width, values.count == tokens * width else {
      throw HeteroKVError(
        .invalidArgument,
        "sequence \(ref) layer \(layer): \(tokens) tokens need \(tokens * width) key and value "
          + "elements ([tokens][\(g.kvHeads)][\(g.headDim)]), got \(keys.count) and \(values.count)"
      )
    }
    if let bad = keys.firstIndex(where: { !$0.isFinite })
      ?? values.firstIndex(where: { !$0.isFinite })
    {
      throw HeteroKVError(
        .invalidArgument, "sequence \(ref) layer \(layer): non-finite K/V at element \(bad)")
    }
    if let observation {
      guard !sealed else {
        throw HeteroKVError(
          .failedPrecondition, "sequence \(ref): observation queries belong to the prefill")
      }
      let row = g.queryHeads * g.headDim
      guard !observation.isEmpty, observation.count % row == 0,
        observation.allSatisfy(\.isFinite)
      else {
        throw HeteroKVError(
          .invalidArgument,
          "sequence \(ref) layer \(layer): observation queries must be finite rows of "
            + "[\(g.queryHeads)][\(g.headDim)], got \(observation.count) values")
      }
    }
    let start = layers[layer].tokens
    // The coordinator reserved memory-tier room for maxTokens; more would overrun it.
    guard start + tokens <= maxTokens else {
      throw HeteroKVError(
        .resourceExhausted,
        "sequence \(ref) layer \(layer): \(start) + \(tokens) tokens exceed the sequence's max_tokens \(maxTokens)"
      )
    }
    var batches: [ShipBatch] = []
    // What can fail (shapes, codebook training) happens before anything changes; a failure
    // after that leaves the sequence refusing every call rather than answering from a
    // half-appended layer.
    let perHead: [(HalfMatrix, HalfMatrix)]
    do {
      perHead = try (0..<g.kvHeads).map { h in
        try Self.headRows(keys: keys, values: values, tokens: tokens, head: h, geometry: g)
      }
    } catch {
      throw HeteroKVError(
        .invalidArgument, "sequence \(ref) layer \(layer): \(error)", cause: error)
    }
    // Key indices are coded on all cores, each moved into a box so the append is in place.
    let boxes = layers[layer].heads.map(IndexBox.init)
    for h in 0..<g.kvHeads where boxes[h].full {
      layers[layer].heads[h].index = nil
      layers[layer].heads[h].untrainedKeys = nil
    }
    let options = self.options
    let sealed = self.sealed
    do {
      let code: @Sendable (Int) throws -> Void = { h in
        guard boxes[h].full else { return }
        // A prefill long enough to train before its end has no queries yet but in its last
        // append: those heads' codes train on the keys alone.
        try boxes[h].append(
          perHead[h].0, options: options, layer: layer, kvHead: h, now: sealed,
          queries: observation.flatMap { options.groupQueries($0, kvHead: h) })
      }
      // A decode step's few rows are coded here: waking the other cores costs more than it.
      if tokens < 64 {
        for h in 0..<g.kvHeads { try code(h) }
      } else {
        _ = try parallelMap(g.kvHeads, code)
      }
    } catch {
      poisoned = HeteroKVError(
        .internalError,
        "sequence \(ref) layer \(layer): coding keys failed, the sequence is unusable: \(error)",
        cause: error)
      throw poisoned!
    }
    for h in 0..<g.kvHeads {
      var head = layers[layer].heads[h]
      layers[layer].heads[h] = HeadState(headDim: g.headDim)
      defer { layers[layer].heads[h] = head }
      let (k, v) = perHead[h]
      // Every head until the seal; then only those that score codes (a static cache has none).
      if options.estimatesUnkept && (!sealed || head.cache == nil || head.index != nil) {
        if head.unkept == nil { head.unkept = UnkeptTokenEstimate(headDim: g.headDim) }
        head.unkept!.add(v)
      }
      if var cache = head.cache {
        head.cache = nil
        do {
          for r in 0..<tokens {
            try cache.append(key: k.row(r), value: v.row(r), position: start + r)
          }
        } catch {
          poisoned = HeteroKVError(
            .internalError, "sequence \(ref) layer \(layer) head \(h): \(error)", cause: error)
        }
        head.cache = cache
      }
      if boxes[h].full {
        head.index = boxes[h].index
        head.untrainedKeys = boxes[h].untrained
      }
      do {
        try head.tailKeys.append(contentsOf: k)
        try head.tailValues.append(contentsOf: v)
      } catch {
        poisoned = HeteroKVError(
          .internalError, "sequence \(ref) layer \(layer) head \(h): \(error)", cause: error)
      }
      let pending = start + tokens - head.enqueued
      if !sealed || pending >= options.decodeShipRows {
        batches.append(shipBatch(&head, layer: layer, kvHead: h, through: start + tokens))
      }
    }
    if let poisoned { throw poisoned }
    layers[layer].tokens = start + tokens
    if let observation {
      layers[layer].observation = observation
      layers[layer].observationRows = observation.count / (g.queryHeads * g.headDim)
      layers[layer].observationEnd = start + tokens
    }
    let shipped = await writer.enqueue(batches, reporting: layer, kvHeads: g.kvHeads)
    for h in 0..<g.kvHeads {
      layers[layer].heads[h].trimTail(acknowledged: shipped.acknowledged[h])
    }
    noteResident(layer: layer)
    return layers[layer].tokens
  }

  /// The next batch of a head's tail for the writer, through token `end`.
  func shipBatch(_ head: inout HeadState, layer: Int, kvHead: Int, through end: Int)
    -> ShipBatch
  {
    let rows = Array((head.enqueued - head.tailStart)..<(end - head.tailStart))
    let batch = ShipBatch(
      head: HeadKey(layer: layer, kvHead: kvHead), start: head.enqueued,
      values: head.tailValues.gather(rows),
      keys: options.shipsKeys ? head.tailKeys.gather(rows) : nil)
    head.enqueued = end
    return batch
  }

  static func headRows(
    keys: [Float16], values: [Float16], tokens: Int, head: Int, geometry g: ModelGeometry
  ) throws -> (HalfMatrix, HalfMatrix) {
    let d = g.headDim
    var k = [Float16](repeating: 0, count: tokens * d)
    var v = [Float16](repeating: 0, count: tokens * d)
    for t in 0..<tokens {
      let from = (t * g.kvHeads + head) * d
      for i in 0..<d {
        k[t * d + i] = keys[from + i]
        v[t * d + i] = values[from + i]
      }
    }
    return (try HalfMatrix(halves: k, cols: d), try HalfMatrix(halves: v, cols: d))
  }
}
