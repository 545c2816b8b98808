import HeteroKVCore
import Foundation
import HeteroKVWire
import Logging
import NIOCore
import Synchronization

/// The data plane over RDMA (librdmacm rsockets): the same frames and the same
/// ``DataPlaneRequestHandler`` as TCP, with one thread per connection (rsockets block), the
/// same connection cap, credential and idle/partial-frame timeouts (`rpoll` before each read).
/// Start it only where ``RDMAAvailability/probe()`` finds a device.
public final class RDMADataPlaneServer: Sendable {
  private let listener: RSocket
  private let connections = Mutex<[Int32: RSocket]>([:])
  private let stopped = Mutex(false)
  /// The port listened on.
  public let port: Int

  /// Listens on `host:port` (0 picks a free port) and serves until ``close()``.
  public static func start(
    host: String, port: Int, handler: any DataPlaneRequestHandler,
    limits: DataPlaneLimits = .standard, options: DataPlaneServerOptions = .init(),
    logger: Logger
  ) throws(HeteroKVError) -> RDMADataPlaneServer {
    let listener = try RSocket.listen(host: host, port: port)
    let server = RDMADataPlaneServer(listener: listener, port: listener.localPort())
    let acceptor = Thread {
      server.acceptLoop(handler: handler, limits: limits, options: options, logger: logger)
    }
    acceptor.name = "hkv-rdma-accept"
    acceptor.start()
    return server
  }

  private init(listener: RSocket, port: Int) {
    self.listener = listener
    self.port = port
  }

  private func acceptLoop(
    handler: any DataPlaneRequestHandler, limits: DataPlaneLimits,
    options: DataPlaneServerOptions, logger: Logger
  ) {
    while let socket = listener.accept() {
      if stopped.withLock({ $0 }) {
        socket.close()
        break
      }
      // Over the cap, a connection is closed before it can send anything.
      guard options.admits(open: connections.withLock({ $0.count }), handler: handler) else {
        socket.close()
        continue
      }
      connections.withLock { $0[socket.fd] = socket }
      let access = options.access
      let thread = Thread {
        self.serve(
          socket, handler: handler, session: DataPlaneSession(access: access), limits: limits,
          options: options, logger: logger)
        self.connections.withLock { _ = $0.removeValue(forKey: socket.fd) }
        socket.close()
      }
      thread.name = "hkv-rdma-conn"
      thread.start()
    }
  }

  private func serve(
    _ socket: RSocket, handler: any DataPlaneRequestHandler, session: DataPlaneSession,
    limits: DataPlaneLimits, options: DataPlaneServerOptions, logger: Logger
  ) {
    let allocator = ByteBufferAllocator()
    while true {
      let inbound: InboundFrame
      do {
        // A silent peer (idle between frames, stalled within one) is closed, as over TCP.
        guard
          let frame = try readFrame(
            from: socket, limits: limits, idle: options.idleTimeout,
            partial: options.partialFrameTimeout)
        else { return }
        inbound = frame
      } catch {
        handler.rejected(error.error)
        logger.warning("closing RDMA data-plane connection: \(error.error)")
        if let header = error.header {
          let reply = Frame.error(
            error.error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
          _ = socket.writeAll(reply.serialized(allocator: allocator))
        }
        return
      }
      let response: Frame
      var close = false
      switch inbound {
      case .frame(let frame):
        (response, close) = RequestDispatch.respond(
          to: frame, handler: handler, session: session, allocator: allocator)
      case .corrupt(let header, let error):
        handler.rejected(error)
        response = .error(
          error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
      }
      guard socket.writeAll(response.serialized(allocator: allocator)), !close else { return }
    }
  }

  /// Stops accepting and closes open connections.
  public func close() {
    stopped.withLock { $0 = true }
    listener.shutdown()
    listener.close()
    for socket in connections.withLock({ Array($0.values) }) { socket.shutdown() }
  }
}
