import HeteroKVCore
import NIOCore

/// How a TCP (or RDMA) data-plane server treats its connections.
public struct DataPlaneServerOptions: Sendable, Hashable {
  /// Who may connect; none configured: everyone.
  public var access: DataPlaneAccess
  /// Open connections at most; further ones are closed on accept.
  public var maxConnections: Int
  /// A connection that sends nothing for this long (between frames) is closed.
  public var idleTimeout: Duration
  /// A connection that stops in the middle of a frame for this long is closed.
  public var partialFrameTimeout: Duration
  /// Threads that serve long PartialAttention and Gather requests (TCP), so one does not stall
  /// the other connections of its event loop; 0 serves every request on the event loop.
  public var computeThreads: Int
  /// Event-loop threads of the server's own; 0 shares the process's event loops. A node that
  /// shares a process with a worker or other nodes (an in-process cluster) is given its own,
  /// as a node process has: on shared loops its requests waited behind the other roles' I/O.
  public var eventLoopThreads: Int
  /// Whether clients in the node's own process reach it without a socket
  /// (``ColocatedDataPlaneServer``), beside the listener that serves everyone else.
  public var servesColocated: Bool

  public init(
    access: DataPlaneAccess = DataPlaneAccess(clusterToken: nil), maxConnections: Int = 1024,
    idleTimeout: Duration = .seconds(600), partialFrameTimeout: Duration = .seconds(10),
    computeThreads: Int = System.coreCount, eventLoopThreads: Int = 0,
    servesColocated: Bool = false
  ) {
    self.access = access
    self.maxConnections = maxConnections
    self.idleTimeout = idleTimeout
    self.partialFrameTimeout = partialFrameTimeout
    self.computeThreads = computeThreads
    self.eventLoopThreads = eventLoopThreads
    self.servesColocated = servesColocated
  }

  /// Whether a new connection fits beside `open` others; over the cap the handler is told
  /// (the node counts it) and the caller closes the connection before it can send anything.
  func admits(open: Int, handler: any DataPlaneRequestHandler) -> Bool {
    guard open >= maxConnections else { return true }
    handler.rejected(
      HeteroKVError(.resourceExhausted, "more than \(maxConnections) data-plane connections"))
    return false
  }
}
