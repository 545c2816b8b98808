import Foundation
import ServiceLifecycle

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Shuts a daemon down gracefully once the process that started it is gone, so that children
/// of `hkv cluster up` (or of an engine's embedded cluster) never outlive a parent that was
/// killed without a chance to stop them.
///
/// The parent is named by its process id; the watch polls `getppid()`, which changes (to the
/// reaper) the moment the parent dies. Run it in the daemon's `ServiceGroup` with
/// `successTerminationBehavior: .gracefullyShutdownGroup`.
public struct ParentProcessWatch: Service {
  /// The environment variable a parent sets to its own process id to be watched.
  public static let environmentKey = "HKV_PARENT_PID"

  /// The process id whose death shuts the daemon down.
  public let parent: pid_t
  /// How often the parent is checked.
  public let interval: Duration

  /// A watch of `parent`, checked every `interval`.
  public init(parent: pid_t, interval: Duration = .milliseconds(200)) {
    self.parent = parent
    self.interval = interval
  }

  /// The watch the environment asks for (`HKV_PARENT_PID`), if any. A parent that is already
  /// gone when the daemon starts counts as gone: the watch returns at once.
  public static func fromEnvironment(
    _ environment: [String: String] = ProcessInfo.processInfo.environment
  ) -> ParentProcessWatch? {
    environment[environmentKey].flatMap { pid_t($0) }.map { ParentProcessWatch(parent: $0) }
  }

  /// Returns when the parent is gone (the group then shuts down) or when the group shuts
  /// down for another reason.
  public func run() async throws {
    do {
      try await cancelWhenGracefulShutdown { try await parentExit() }
    } catch is CancellationError {
      return
    }
  }

  /// Returns once the parent is gone; throws `CancellationError` if cancelled first.
  public func parentExit() async throws {
    while getppid() == parent {
      try await Task.sleep(for: interval)
    }
  }
}
