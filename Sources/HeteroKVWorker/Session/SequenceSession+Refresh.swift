import HeteroKVEngineClient
import HeteroKVSettings
import HeteroKVCore
import HeteroKVMemoryClient
import HeteroKVWire

// Pivot drift checks and the background refresh of their satellites.
extension SequenceSession {
  // MARK: Drift and refresh

  /// On a pivot's check step, compares its attention with its reference; on drift, starts
  /// refreshing its satellites' caches from the memory tier in the background.
  func watchDrift(layer: Int, kvHead: Int, scores: [Float]) {
    guard var monitor = layers[layer].heads[kvHead].monitor else { return }
    let drift = monitor.check(
      step: layers[layer].decodeStep, scores: scores, heads: geometry.groupSize)
    layers[layer].heads[kvHead].monitor = monitor
    guard let drift else { return }
    let prefill = prefillTokens
    for (s, head) in layers[layer].heads.enumerated() {
      guard case .satellite(let pivot) = head.role, pivot == kvHead, head.cache != nil else {
        continue
      }
      // The decoded rows stay, so the refreshed prefix fills what the budget leaves them.
      let decoded = head.cache!.positions.count(where: { $0 >= prefill })
      let positions = HeteroCacheDecodeState.refreshedPrefix(
        drift: drift, prefillTokens: prefill, cap: max(1, head.cap - decoded))
      refreshes += 1
      metrics.refreshed()
      startedRefreshes += 1
      let id = startedRefreshes
      refreshTasks[id] = Task {
        defer { self.refreshTasks[id] = nil }
        guard
          let (keys, values) = try? await self.gatherRows(
            layer: layer, kvHead: s, positions: positions),
          let cache = try? CompressedHeadCache(positions: positions, rows: keys, values: values)
        else { return }
        self.refreshed(layer: layer, kvHead: s, prefix: cache)
      }
    }
  }

  func refreshed(layer: Int, kvHead: Int, prefix: CompressedHeadCache) {
    layers[layer].readyRefresh[kvHead] = prefix
  }

  /// Applies the refreshes that finished since the layer's last step.
  func applyRefreshes(layer: Int) {
    for (s, prefix) in layers[layer].readyRefresh {
      guard let cache = layers[layer].heads[s].cache else { continue }
      if let merged = try? cache.keepingRows(from: prefillTokens, after: prefix) {
        layers[layer].heads[s].cache = merged
      }
    }
    layers[layer].readyRefresh = [:]
  }
}
