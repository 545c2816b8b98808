import HeteroKVCore
import HeteroKVWire
import NIOCore
import Synchronization

/// The data plane of a memory node that shares its process with its clients (an in-process
/// cluster; a worker whose host memory is one of the pool's nodes, as HCAttention offloads
/// values to the host it runs on). A client in the process reaches the node through
/// ``ColocatedDataPlaneConnection`` by the node's data-plane address: each request is admitted
/// under the connection's grant and served by the node's handler on the caller's thread,
/// through the same encoded messages the sockets carry, but with no socket, no event loop and
/// no thread woken. Over loopback TCP a request and its answer cross four threads, each hand-off
/// 28-40 µs on this machine; here none.
///
/// The node keeps its TCP (or RDMA) listener for every client outside the process.
public final class ColocatedDataPlaneServer: Sendable {
  /// The data-plane address clients name the node by.
  public let address: HostPort
  let handler: any DataPlaneRequestHandler
  let access: DataPlaneAccess
  let limits: DataPlaneLimits
  private let open = Atomic<Bool>(true)
  private let served = Atomic<Int>(0)

  /// Nodes served in this process, by data-plane address.
  private static let registry = Mutex<[HostPort: ColocatedDataPlaneServer]>([:])

  /// Serves `handler` to clients in this process that name `address`, with the TCP server's
  /// access and limits. Fails when another node of this process already serves that address.
  public static func start(
    address: HostPort, handler: any DataPlaneRequestHandler, limits: DataPlaneLimits = .standard,
    options: DataPlaneServerOptions = .init()
  ) throws(HeteroKVError) -> ColocatedDataPlaneServer {
    let server = ColocatedDataPlaneServer(
      address: address, handler: handler, access: options.access, limits: limits)
    let taken = registry.withLock { servers -> Bool in
      if let other = servers[address], other.isOpen { return true }
      servers[address] = server
      return false
    }
    guard !taken else {
      throw HeteroKVError(
        .alreadyExists, "a co-located data plane already serves \(address) in this process")
    }
    return server
  }

  /// The open node of this process at `address`, if any: a client connects to it instead of
  /// opening a socket.
  public static func server(at address: HostPort) -> ColocatedDataPlaneServer? {
    registry.withLock { servers in
      guard let server = servers[address], server.isOpen else { return nil }
      return server
    }
  }

  private init(
    address: HostPort, handler: any DataPlaneRequestHandler, access: DataPlaneAccess,
    limits: DataPlaneLimits
  ) {
    self.address = address
    self.handler = handler
    self.access = access
    self.limits = limits
  }

  /// Requests its connections have passed to the handler (admitted under a grant), so a
  /// caller can tell that its clients reached the node in process.
  public var requestsServed: Int { served.load(ordering: .relaxed) }

  /// Counts one request passed to the handler.
  fileprivate func noteServed() { served.add(1, ordering: .relaxed) }

  /// Whether the node still serves; once closed, its connections fail every request with
  /// `.connectionClosed`, as a closed socket does.
  public var isOpen: Bool { open.load(ordering: .acquiring) }

  /// A new connection, with a session of its own (it authenticates as a TCP one does).
  /// `limits` are the client's: an answer larger than its payload bound fails as an oversized
  /// frame read from a socket does.
  public func connect(limits: DataPlaneLimits = .standard) throws(HeteroKVError)
    -> ColocatedDataPlaneConnection
  {
    guard isOpen else {
      throw HeteroKVError(.unavailable, "the co-located data plane at \(address) is closed")
    }
    return ColocatedDataPlaneConnection(server: self, clientLimits: limits)
  }

  /// Stops serving: later requests on its connections fail, and the address is free again.
  public func close() {
    open.store(false, ordering: .releasing)
    Self.registry.withLock { servers in
      if servers[address] === self { servers[address] = nil }
    }
  }
}

/// A connection to a node in the same process (``ColocatedDataPlaneServer``). A request is
/// served when it is started, on the caller's thread, so requests of one caller take effect in
/// the order they were sent; ``start(opcode:payload:timeout:)`` returns an answered call.
///
/// How it differs from a socket, on purpose:
/// - No deadline applies (the work is the caller's own thread's), so a slow co-located node is
///   never failed over for `deadlineExceeded`; a closed one fails with `connectionClosed`.
/// - Concurrent callers are served concurrently, each on its own thread; nothing moves a large
///   request to a compute pool.
/// - An oversized payload is refused with `frameTooLarge` and the connection stays usable: no
///   byte stream is left mid-frame, so there is nothing to resynchronise.
public final class ColocatedDataPlaneConnection: DataPlaneConnection {
  /// The connection's standing (nonce, grant), changed by the authentication frames, and
  /// whether it is closed: one lock, so a refusal that closes the connection takes effect
  /// before any later request is admitted.
  private struct State {
    var session: DataPlaneSession
    var closed = false
  }

  private let server: ColocatedDataPlaneServer
  private let clientLimits: DataPlaneLimits
  private let state: Mutex<State>
  private let nextID = Atomic<UInt64>(1)
  private let allocator = ByteBufferAllocator()

  fileprivate init(server: ColocatedDataPlaneServer, clientLimits: DataPlaneLimits) {
    self.server = server
    self.clientLimits = clientLimits
    self.state = Mutex(State(session: DataPlaneSession(access: server.access)))
  }

  public var isActive: Bool { !state.withLock { $0.closed } && server.isOpen }

  public func call(opcode: Opcode, payload: ByteBuffer, timeout: Duration?)
    async throws(HeteroKVError) -> ByteBuffer
  {
    try serve(opcode: opcode, payload: payload).get()
  }

  public func start(opcode: Opcode, payload: ByteBuffer, timeout: Duration?) -> PendingCall {
    let pending = PendingCall()
    pending.complete(serve(opcode: opcode, payload: payload))
    return pending
  }

  public func close() async {
    state.withLock { $0.closed = true }
  }

  private var closedError: HeteroKVError {
    HeteroKVError(
      .connectionClosed, "connection to the co-located node at \(server.address) is closed")
  }

  /// Admits and serves one request as the TCP server does: the payload bound, the protocol and
  /// the session's grant, then the handler.
  private func serve(opcode: Opcode, payload: ByteBuffer) -> Result<ByteBuffer, HeteroKVError> {
    guard server.isOpen else { return .failure(closedError) }
    let handler = server.handler
    guard payload.readableBytes <= server.limits.maxPayloadBytes else {
      let error = HeteroKVError(
        .frameTooLarge,
        "payload of \(payload.readableBytes) bytes exceeds the limit of "
          + "\(server.limits.maxPayloadBytes)")
      handler.rejected(error)
      return .failure(error)
    }
    // No bytes cross a wire, so the frame carries no checksum.
    let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
    let frame = Frame(
      header: FrameHeader(
        opcode: opcode.rawValue, flags: [], requestID: id,
        payloadLength: UInt32(payload.readableBytes), checksum: 0),
      payload: payload)
    let allocator = self.allocator
    let admission = state.withLock { state -> RequestDispatch.Admission? in
      guard !state.closed else { return nil }
      let admission = RequestDispatch.admit(
        frame, handler: handler, session: state.session, allocator: allocator)
      if case .answer(_, let close) = admission, close { state.closed = true }
      return admission
    }
    let response: Frame
    switch admission {
    case nil:
      return .failure(closedError)
    case .answer(let answer, _):
      response = answer
    case .serve(let opcode, let grant):
      server.noteServed()
      response = RequestDispatch.serve(
        frame, opcode: opcode, grant: grant, handler: handler, allocator: allocator)
    }
    if let error = response.decodedError() { return .failure(error) }
    guard response.payload.readableBytes <= clientLimits.maxPayloadBytes else {
      return .failure(
        HeteroKVError(
          .frameTooLarge,
          "answer of \(response.payload.readableBytes) bytes exceeds this client's limit of "
            + "\(clientLimits.maxPayloadBytes)"))
    }
    return .success(response.payload)
  }
}
