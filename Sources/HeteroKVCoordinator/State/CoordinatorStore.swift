import HeteroKVCore
import Foundation
import HeteroKVWire
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Where the coordinator keeps its state so that a restart loses nothing. The coordinator
/// calls `append` for each change before it answers the request that made it, and `load` once
/// at start. A file store ships here; a replicated one (etcd) fits the same seam.
public protocol CoordinatorStore: Sendable {
  /// The state as last stored, or nil when nothing was ever stored.
  func load() throws(HeteroKVError) -> CoordinatorState?
  /// Makes `change` durable. `state` is the state with it applied, for stores that snapshot.
  /// The coordinator awaits it before adopting the change; one append runs at a time.
  func append(_ change: StateChange, state: CoordinatorState) async throws(HeteroKVError)
}

/// A store that keeps nothing across processes, for tests and `hkv demo`.
public final class InMemoryCoordinatorStore: CoordinatorStore {
  private let state = Mutex<CoordinatorState?>(nil)

  public init() {}

  public func load() throws(HeteroKVError) -> CoordinatorState? { state.withLock { $0 } }

  public func append(_ change: StateChange, state newState: CoordinatorState)
    throws(HeteroKVError)
  {
    state.withLock { $0 = newState }
  }
}

/// How ``FileCoordinatorStore`` writes and syncs its log: POSIX `write` and `fsync` in
/// production; tests inject short writes and failed syncs through this seam.
public struct StoreFileOperations: Sendable {
  /// Writes bytes to a descriptor, as `write(2)`: the count written, or -1 with `errno` set.
  public var write: @Sendable (Int32, UnsafeRawBufferPointer) -> Int
  /// Flushes a descriptor to stable storage, as `fsync(2)`: 0, or -1 with `errno` set.
  public var fsync: @Sendable (Int32) -> Int32

  public init(
    write: @escaping @Sendable (Int32, UnsafeRawBufferPointer) -> Int,
    fsync: @escaping @Sendable (Int32) -> Int32
  ) {
    self.write = write
    self.fsync = fsync
  }

  /// The system calls themselves.
  public static let posix = StoreFileOperations(
    write: { fd, bytes in Glibc.write(fd, bytes.baseAddress, bytes.count) },
    fsync: { fd in Glibc.fsync(fd) })
}

/// The state in a directory: a snapshot (`state.snapshot`, JSON, replaced atomically by
/// write-fsync-rename) and an append-only log of changes since (`state.log`), each record
/// `[length u32][CRC-32C u32][JSON {revision, change}]`, fsynced before `append` returns.
/// Loading replays the log onto the snapshot, skipping entries the snapshot already holds (a
/// crash between snapshot and log reset) and cutting a torn last record. A damaged record
/// before the end is an error: the coordinator will not start on a state it cannot trust. An
/// exclusive lock on `LOCK` keeps two coordinators off one directory.
///
/// The log never holds a change that was not acknowledged: an append whose write or fsync
/// fails is cut back to the last good record before the error is thrown (and when even the
/// cut fails, the store refuses every later append until the coordinator restarts and
/// replays). A record that is durable is acknowledged even if the snapshot after it fails;
/// the snapshot is tried again at the next append.
public final class FileCoordinatorStore: CoordinatorStore {
  private struct Entry: Codable {
    var revision: UInt64
    var change: StateChange
  }

  private struct Files: ~Copyable {
    var log: Int32
    var entriesSinceSnapshot: Int
    /// Bytes of the log up to the end of its last acknowledged record.
    var goodLength: off_t
    /// Set when a failed append could not be cut back: nothing more is appended.
    var broken: HeteroKVError?
    /// Why the last snapshot attempt failed, if it did (the log still holds its records).
    var snapshotFailure: HeteroKVError?
  }

  /// The directory.
  public let directory: String
  /// Log entries after which a snapshot is written and the log restarted.
  public let snapshotEvery: Int
  private let lockDescriptor: Int32
  private let files: Mutex<Files>
  private let operations: StoreFileOperations

  private var snapshotPath: String { directory + "/state.snapshot" }
  private var logPath: String { directory + "/state.log" }

  /// Opens (creating) the directory and takes its lock; `operations` writes and syncs the log.
  public init(
    directory: String, snapshotEvery: Int = 1024, operations: StoreFileOperations = .posix
  ) throws(HeteroKVError) {
    self.directory = directory
    self.operations = operations
    self.snapshotEvery = max(1, snapshotEvery)
    do {
      try FileManager.default.createDirectory(
        atPath: directory, withIntermediateDirectories: true)
    } catch {
      throw .init(
        .storageFailure,
        "cannot create the state directory \(directory): \(error.localizedDescription)")
    }
    let lock = open(directory + "/LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard lock >= 0 else { throw Self.posixError("open \(directory)/LOCK") }
    guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
      close(lock)
      throw .init(
        .storageFailure, "the state directory \(directory) is locked by another coordinator process"
      )
    }
    let log = open(directory + "/state.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
    guard log >= 0 else {
      close(lock)
      throw Self.posixError("open \(directory)/state.log")
    }
    // The log's directory entry must be durable too, or a crash can lose the whole file.
    let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dir >= 0, fsync(dir) == 0 else {
      let error = Self.posixError("fsync \(directory)")
      if dir >= 0 { close(dir) }
      close(log)
      close(lock)
      throw error
    }
    close(dir)
    lockDescriptor = lock
    files = Mutex(
      Files(log: log, entriesSinceSnapshot: 0, goodLength: lseek(log, 0, SEEK_END)))
  }

  /// Why the last snapshot failed, or nil when it succeeded (or none was due yet).
  public var snapshotFailure: HeteroKVError? { files.withLock { $0.snapshotFailure } }

  deinit {
    _ = files.withLock { close($0.log) }
    close(lockDescriptor)
  }

  public func load() throws(HeteroKVError) -> CoordinatorState? {
    var state: CoordinatorState?
    if let data = FileManager.default.contents(atPath: snapshotPath) {
      do {
        state = try JSONDecoder().decode(CoordinatorState.self, from: data)
      } catch {
        throw .init(.storageFailure, "\(snapshotPath) cannot be read: \(error)")
      }
    }
    guard let bytes = FileManager.default.contents(atPath: logPath).map(Array.init) else {
      return state
    }
    var offset = 0
    var replayed = 0
    let decoder = JSONDecoder()
    while offset < bytes.count {
      guard bytes.count - offset >= 8 else { break }  // torn header
      let length = Int(Self.readU32(bytes, offset))
      let crc = Self.readU32(bytes, offset + 4)
      guard bytes.count - offset - 8 >= length else { break }  // torn payload
      let payload = Array(bytes[(offset + 8)..<(offset + 8 + length)])
      let isLast = offset + 8 + length == bytes.count
      guard CRC32C.checksum(payload) == crc else {
        if isLast { break }
        throw .init(.storageFailure, "\(logPath) is damaged at byte \(offset) (checksum mismatch)")
      }
      let entry: Entry
      do {
        entry = try decoder.decode(Entry.self, from: Data(payload))
      } catch {
        throw .init(
          .storageFailure, "\(logPath) record at byte \(offset) cannot be decoded: \(error)")
      }
      offset += 8 + length
      // Without a snapshot the log starts from the empty state (revision 0); the lease
      // length is configuration, set again by the coordinator.
      var current = state ?? CoordinatorState(leaseSeconds: 1)
      if entry.revision <= current.revision { continue }
      guard entry.revision == current.revision + 1 else {
        throw .init(
          .storageFailure,
          "\(logPath) skips from revision \(current.revision) to \(entry.revision) at byte \(offset)"
        )
      }
      current.apply(entry.change)
      state = current
      replayed += 1
    }
    if offset < bytes.count {
      // Cut the torn tail so the next append starts on a record boundary.
      guard truncate(logPath, off_t(offset)) == 0 else {
        throw Self.posixError("truncate \(logPath)")
      }
    }
    files.withLock {
      $0.entriesSinceSnapshot = replayed
      $0.goodLength = off_t(offset)
    }
    return state
  }

  public func append(_ change: StateChange, state: CoordinatorState) throws(HeteroKVError) {
    let payload: [UInt8]
    do {
      payload = Array(try JSONEncoder().encode(Entry(revision: state.revision, change: change)))
    } catch {
      throw .init(.storageFailure, "cannot encode a state change: \(error)")
    }
    var record = [UInt8]()
    record.reserveCapacity(payload.count + 8)
    Self.appendU32(&record, UInt32(payload.count))
    Self.appendU32(&record, CRC32C.checksum(payload))
    record += payload
    try files.withLock { (files: inout Files) throws(HeteroKVError) in
      if let broken = files.broken { throw broken }
      do throws(HeteroKVError) {
        try writeAll(files.log, record, path: logPath)
        guard operations.fsync(files.log) == 0 else { throw Self.posixError("fsync \(logPath)") }
      } catch {
        // Not acknowledged: cut what reached the file, so replay never applies it.
        if ftruncate(files.log, files.goodLength) != 0 || operations.fsync(files.log) != 0 {
          files.broken = HeteroKVError(
            .storageFailure,
            "\(logPath) holds an unacknowledged record that could not be cut (\(error.message)); "
              + "restart the coordinator")
        }
        throw error
      }
      files.goodLength += off_t(record.count)
      files.entriesSinceSnapshot += 1
      guard files.entriesSinceSnapshot >= snapshotEvery else { return }
      // The record is durable, so the change stands whatever happens to the snapshot.
      do throws(HeteroKVError) {
        try writeSnapshot(state)
        files.snapshotFailure = nil
      } catch {
        files.snapshotFailure = error
        return
      }
      // Entries up to this revision are in the snapshot: start the log again (if the cut
      // fails they stay, and replay skips them).
      if ftruncate(files.log, 0) == 0 {
        // The file is empty now, synced or not: later cuts must not grow it back.
        files.goodLength = 0
        if operations.fsync(files.log) == 0 { files.entriesSinceSnapshot = 0 }
      }
    }
  }

  /// Writes `state` to the snapshot atomically.
  private func writeSnapshot(_ state: CoordinatorState) throws(HeteroKVError) {
    let data: Data
    do {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys]
      data = try encoder.encode(state)
    } catch {
      throw .init(.storageFailure, "cannot encode the state: \(error)")
    }
    let temporary = snapshotPath + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw Self.posixError("open \(temporary)") }
    defer { close(fd) }
    try writeAll(fd, Array(data), path: temporary)
    guard operations.fsync(fd) == 0 else { throw Self.posixError("fsync \(temporary)") }
    guard rename(temporary, snapshotPath) == 0 else { throw Self.posixError("rename \(temporary)") }
    let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dir >= 0 else { throw Self.posixError("open \(directory)") }
    defer { close(dir) }
    guard fsync(dir) == 0 else { throw Self.posixError("fsync \(directory)") }
  }

  private func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(HeteroKVError) {
    var written = 0
    while written < bytes.count {
      let n = bytes.withUnsafeBytes {
        operations.write(fd, UnsafeRawBufferPointer(rebasing: $0[written...]))
      }
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else { throw Self.posixError("write \(path)") }
      written += n
    }
  }

  private static func posixError(_ what: String) -> HeteroKVError {
    .init(.storageFailure, "\(what): \(String(cString: strerror(errno)))")
  }

  private static func readU32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
    UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16
      | UInt32(bytes[at + 3]) << 24
  }

  private static func appendU32(_ bytes: inout [UInt8], _ value: UInt32) {
    for shift in stride(from: 0, to: 32, by: 8) {
      bytes.append(UInt8(truncatingIfNeeded: value >> shift))
    }
  }
}
