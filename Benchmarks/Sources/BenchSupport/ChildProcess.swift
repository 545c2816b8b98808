import Foundation

#if canImport(Glibc)
  import Glibc
#endif

extension Process {
  /// A process running `executable arguments` that cannot outlive this one: it is started
  /// under a small `/bin/sh` guard that kills it once this process is gone (even after a crash
  /// or SIGKILL, when no `defer` runs) or when the guard is terminated (``Process/terminate()``
  /// then stops the child too, and `waitUntilExit` returns once it has exited). Start it with
  /// ``runWithDefaultSignalMask()``.
  public static func tiedToParent(
    _ executable: URL, _ arguments: [String], environment: [String: String] = [:]
  ) -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    let parent = ProcessInfo.processInfo.processIdentifier
    let guardScript = """
      "$0" "$@" & child=$!
      trap 'kill $child 2>/dev/null' TERM INT HUP
      while kill -0 \(parent) 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.2; done
      kill $child 2>/dev/null
      wait $child
      """
    process.arguments = ["-c", guardScript, executable.path] + arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    return process
  }

  /// Starts the process with no signal blocked. A child inherits the signal mask of the
  /// thread that spawns it, and Swift's concurrency threads block most signals: started from
  /// one, a child never sees SIGTERM (a `redis-server` so started outlived its benchmark).
  public func runWithDefaultSignalMask() throws {
    #if canImport(Glibc)
      var empty = sigset_t()
      var saved = sigset_t()
      sigemptyset(&empty)
      pthread_sigmask(SIG_SETMASK, &empty, &saved)
      defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
    #endif
    try run()
  }
}
