import HeteroKVCore
import CRDMA
import HeteroKVWire
import NIOCore

#if canImport(Glibc)
  import Glibc
#endif

/// A blocking stream socket over librdmacm's rsockets: the socket calls of TCP, carried by
/// RDMA reliable connections. Used by the RDMA data-plane server and connection, which run it
/// on their own threads (rsockets cannot be driven by an event loop's epoll).
struct RSocket: Sendable {
  let fd: Int32

  /// A socket listening on `host:port` (IPv4 or IPv6 literal or name).
  static func listen(host: String, port: Int, backlog: Int32 = 128) throws(HeteroKVError)
    -> RSocket
  {
    let address = try resolve(host: host, port: port)
    let fd = hkv_rsocket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw failure("rsocket") }
    var one: Int32 = 1
    _ = hkv_rsetsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    let bound = address.withSockAddr { hkv_rbind(fd, $0, socklen_t($1)) }
    guard bound == 0 else {
      let error = failure("rbind \(host):\(port)")
      hkv_rclose(fd)
      throw error
    }
    guard hkv_rlisten(fd, backlog) == 0 else {
      let error = failure("rlisten")
      hkv_rclose(fd)
      throw error
    }
    return RSocket(fd: fd)
  }

  /// A socket connected to `host:port`.
  static func connect(host: String, port: Int) throws(HeteroKVError) -> RSocket {
    let address = try resolve(host: host, port: port)
    let fd = hkv_rsocket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw failure("rsocket") }
    var one: Int32 = 1
    _ = hkv_rsetsockopt(
      fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    let connected = address.withSockAddr { hkv_rconnect(fd, $0, socklen_t($1)) }
    guard connected == 0 else {
      let error = failure("rconnect \(host):\(port)", code: .unavailable)
      hkv_rclose(fd)
      throw error
    }
    return RSocket(fd: fd)
  }

  /// The port the socket is bound to.
  func localPort() -> Int {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let ok = withUnsafeMutablePointer(to: &storage) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { hkv_rgetsockname(fd, $0, &length) }
    }
    guard ok == 0 else { return 0 }
    return withUnsafePointer(to: &storage) {
      $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
        Int(UInt16(bigEndian: $0.pointee.sin_port))
      }
    }
  }

  /// Accepts one connection; nil once the listening socket is shut down.
  func accept() -> RSocket? {
    let client = hkv_raccept(fd, nil, nil)
    return client >= 0 ? RSocket(fd: client) : nil
  }

  /// Reads exactly `count` bytes into `buffer`; false at end of stream, on error, or when no
  /// byte arrives within `wait` (nil: wait forever).
  func readExactly(_ count: Int, into buffer: inout ByteBuffer, wait: Duration? = nil) -> Bool {
    var remaining = count
    while remaining > 0 {
      if let wait, !waitReadable(wait) { return false }
      let got = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: remaining) { out in
        let n = hkv_rrecv(fd, out.baseAddress, remaining, 0)
        return n > 0 ? n : 0
      }
      if got == 0 { return false }
      remaining -= got
    }
    return true
  }

  /// Whether bytes (or the end of the stream) arrive within `wait`.
  func waitReadable(_ wait: Duration) -> Bool {
    let milliseconds = Int32(clamping: max(1, wait.nanoseconds / 1_000_000))
    var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return hkv_rpoll(&descriptor, 1, milliseconds) > 0
  }

  /// Writes all readable bytes of `buffer`; false on error.
  func writeAll(_ buffer: ByteBuffer) -> Bool {
    buffer.withUnsafeReadableBytes { raw in
      var offset = 0
      while offset < raw.count {
        let n = hkv_rsend(fd, raw.baseAddress! + offset, raw.count - offset, 0)
        if n <= 0 { return false }
        offset += n
      }
      return true
    }
  }

  func shutdown() { _ = hkv_rshutdown(fd, Int32(SHUT_RDWR)) }
  func close() { _ = hkv_rclose(fd) }

  private static func resolve(host: String, port: Int) throws(HeteroKVError) -> SocketAddress {
    do {
      return try SocketAddress.makeAddressResolvingHost(host, port: port)
    } catch {
      throw HeteroKVError(
        .invalidArgument, "cannot resolve \(host):\(port): \(error)", cause: error)
    }
  }

  private static func failure(_ what: String, code: HeteroKVError.Code = .internalError)
    -> HeteroKVError
  {
    HeteroKVError(code, "\(what) failed: \(String(cString: strerror(errno)))")
  }
}

extension SocketAddress {
  fileprivate func withSockAddr<T>(_ body: (UnsafePointer<sockaddr>, Int) -> T) -> T {
    switch self {
    case .v4(let a):
      var raw = a.address
      return withUnsafePointer(to: &raw) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          body($0, MemoryLayout<sockaddr_in>.size)
        }
      }
    case .v6(let a):
      var raw = a.address
      return withUnsafePointer(to: &raw) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          body($0, MemoryLayout<sockaddr_in6>.size)
        }
      }
    case .unixDomainSocket(let a):
      var raw = a.address
      return withUnsafePointer(to: &raw) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          body($0, MemoryLayout<sockaddr_un>.size)
        }
      }
    }
  }
}

/// Reads one frame from a blocking stream: the header, checked, then its payload. nil at end
/// of stream, or when the peer is silent for `idle` before a frame or for `partial` in the
/// middle of one (nil waits: forever, as a client does).
func readFrame(
  from socket: RSocket, limits: DataPlaneLimits, idle: Duration? = nil, partial: Duration? = nil
) throws(FrameRejection) -> InboundFrame? {
  var buffer = ByteBuffer()
  guard socket.readExactly(1, into: &buffer, wait: idle),
    socket.readExactly(FrameHeader.size - 1, into: &buffer, wait: partial)
  else { return nil }
  if let frame = try FrameCodec.readFrame(from: &buffer, limits: limits) { return frame }
  let length = Int(
    buffer.getInteger(at: buffer.readerIndex + 16, endianness: .little, as: UInt32.self)!)
  guard socket.readExactly(length, into: &buffer, wait: partial) else { return nil }
  return try FrameCodec.readFrame(from: &buffer, limits: limits)
}
