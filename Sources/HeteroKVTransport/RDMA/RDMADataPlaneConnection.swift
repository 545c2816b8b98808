import HeteroKVCore
import Foundation
import HeteroKVWire
import NIOCore
import Synchronization

/// A pipelined client connection over RDMA (rsockets): requests are written under a lock,
/// a reader thread matches responses to waiting callers by request id.
public final class RDMADataPlaneConnection: DataPlaneConnection {
  private struct State {
    var pending: [UInt64: CheckedContinuation<Frame, any Error>] = [:]
    var nextID: UInt64 = 1
    var closed = false
  }

  private let socket: RSocket
  private let limits: DataPlaneLimits
  private let state = Mutex(State())
  private let writeLock = Mutex(())
  private let description: String

  /// Connects to a node's RDMA data plane.
  public static func connect(host: String, port: Int, limits: DataPlaneLimits = .standard)
    throws(HeteroKVError) -> RDMADataPlaneConnection
  {
    let socket = try RSocket.connect(host: host, port: port)
    let connection = RDMADataPlaneConnection(
      socket: socket, limits: limits, description: "\(host):\(port)")
    let reader = Thread { connection.readLoop() }
    reader.name = "hkv-rdma-client"
    reader.start()
    return connection
  }

  private init(socket: RSocket, limits: DataPlaneLimits, description: String) {
    self.socket = socket
    self.limits = limits
    self.description = description
  }

  public var isActive: Bool { !state.withLock { $0.closed } }

  public func call(opcode: Opcode, payload: ByteBuffer, timeout: Duration?)
    async throws(HeteroKVError) -> ByteBuffer
  {
    let frame: Frame
    do {
      frame = try await withCheckedThrowingContinuation { continuation in
        let id: UInt64? = state.withLock { s in
          if s.closed { return nil }
          let id = s.nextID
          s.nextID &+= 1
          s.pending[id] = continuation
          return id
        }
        guard let id else {
          continuation.resume(
            throwing: HeteroKVError(.connectionClosed, "connection to \(description) is closed"))
          return
        }
        if let timeout {
          Task {
            try? await Task.sleep(for: timeout)
            self.complete(
              id,
              with: .failure(HeteroKVError(.deadlineExceeded, "no response before the deadline")))
          }
        }
        let request = Frame(opcode: opcode.rawValue, flags: [], requestID: id, payload: payload)
        let sent = writeLock.withLock { _ in socket.writeAll(request.serialized()) }
        if !sent {
          complete(
            id, with: .failure(HeteroKVError(.connectionClosed, "write to \(description) failed")))
        }
      }
    } catch let error as HeteroKVError {
      throw error
    } catch {
      throw HeteroKVError(.internalError, "\(error)", cause: error)
    }
    if let error = frame.decodedError(limits: limits) { throw error }
    return frame.payload
  }

  private func complete(_ id: UInt64, with result: Result<Frame, HeteroKVError>) {
    let continuation = state.withLock { $0.pending.removeValue(forKey: id) }
    continuation?.resume(with: result.mapError { $0 as any Error })
  }

  private func readLoop() {
    var reason = "connection closed by the server"
    while true {
      do {
        guard let inbound = try readFrame(from: socket, limits: limits) else { break }
        switch inbound {
        case .frame(let frame): complete(frame.header.requestID, with: .success(frame))
        case .corrupt(let header, let error): complete(header.requestID, with: .failure(error))
        }
      } catch {
        reason = "server sent an unreadable frame: \(error.error.message)"
        break
      }
    }
    let waiting = state.withLock { s in
      s.closed = true
      let all = s.pending
      s.pending.removeAll()
      return all
    }
    for continuation in waiting.values {
      continuation.resume(throwing: HeteroKVError(.connectionClosed, reason))
    }
    socket.close()
  }

  public func close() async {
    socket.shutdown()
  }
}
