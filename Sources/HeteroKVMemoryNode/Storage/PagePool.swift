import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// One page of host memory from a ``PagePool``.
public struct Page: @unchecked Sendable, Hashable {
  /// Start of the page (aligned to 64 bytes).
  public let base: UnsafeMutableRawPointer
}

/// Fixed-size pages of host memory, never more than the configured capacity in use. Shards
/// take whole pages; a batch asks for all the pages it needs at once and either gets them all
/// or none, so a full node fails a put cleanly instead of waiting or storing part of it.
/// Freed pages are kept for reuse.
public final class PagePool: Sendable {
  /// Bytes per page.
  public let pageBytes: Int
  /// Most bytes of pages in use at once.
  public let capacityBytes: Int
  /// Most pages in use at once.
  public let maxPages: Int

  private struct State {
    var free: [Page] = []
    var inUse = 0
  }

  private let state = Mutex(State())

  /// A pool of `capacityBytes` in pages of `pageBytes` (a multiple of 64).
  public init(capacityBytes: Int, pageBytes: Int) {
    precondition(pageBytes >= 64 && pageBytes % 64 == 0 && capacityBytes >= 0)
    self.pageBytes = pageBytes
    self.capacityBytes = capacityBytes
    self.maxPages = capacityBytes / pageBytes
  }

  deinit {
    state.withLock { s in
      for page in s.free { free(page.base) }
    }
  }

  /// Pages in use now.
  public var pagesInUse: Int { state.withLock { $0.inUse } }
  /// Bytes of pages in use now.
  public var usedBytes: Int { pagesInUse * pageBytes }

  /// `count` pages, or nil when that many would pass the capacity (nothing is taken then).
  public func allocate(_ count: Int) -> [Page]? {
    guard count > 0 else { return [] }
    let reused: [Page]? = state.withLock { s in
      guard s.inUse + count <= maxPages else { return nil }
      s.inUse += count
      let take = min(count, s.free.count)
      let pages = Array(s.free.suffix(take))
      s.free.removeLast(take)
      return pages
    }
    guard var pages = reused else { return nil }
    while pages.count < count {
      var raw: UnsafeMutableRawPointer?
      guard posix_memalign(&raw, 64, pageBytes) == 0, let raw else {
        // The system refused memory the pool was allowed: give the reservation back.
        release(pages)
        state.withLock { $0.inUse -= count - pages.count }
        return nil
      }
      pages.append(Page(base: raw))
    }
    return pages
  }

  /// Returns pages to the pool.
  public func release(_ pages: [Page]) {
    guard !pages.isEmpty else { return }
    state.withLock { s in
      s.inUse -= pages.count
      s.free.append(contentsOf: pages)
    }
  }
}
