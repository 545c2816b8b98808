import HeteroKVCore
import HeteroKVWire
import NIOCore

/// What a data-plane server serves: one request in, one response payload (or error) out.
/// Every transport (TCP, RDMA) drives the same handler, so a node behaves the same over each.
public protocol DataPlaneRequestHandler: Sendable {
  /// Serves one request whose frame was already read and checksummed, for a connection
  /// with `grant` (the transport answered the authentication frames). Called concurrently:
  /// over TCP on an I/O thread for cheap requests and on the server's compute pool for the
  /// ones that read many rows (PartialAttention, Gather), one request at a time per
  /// connection; co-located, on each caller's own thread, so one connection's callers may be
  /// served at once.
  func handle(
    opcode: Opcode, payload: ByteBuffer, allocator: ByteBufferAllocator, grant: DataPlaneGrant
  ) -> Result<ByteBuffer, HeteroKVError>

  /// Told about each frame rejected before it reached `handle` (bad checksum, garbage,
  /// unknown opcode), so the node can count them.
  func rejected(_ error: HeteroKVError)
}

/// The server-side steps every transport shares: validating a decoded frame and producing the
/// response frame.
enum RequestDispatch {
  /// What a read frame needs: an answer now (a refusal, the authentication exchange; `close`
  /// after a refused credential), or serving under the connection's grant.
  enum Admission {
    case answer(Frame, close: Bool)
    case serve(Opcode, DataPlaneGrant)
  }

  /// The response to `frame`, and whether the connection must then close (a refused
  /// credential): ``admit(_:handler:session:allocator:)`` then, where admitted,
  /// ``serve(_:opcode:grant:handler:allocator:)`` on the calling thread.
  static func respond(
    to frame: Frame, handler: any DataPlaneRequestHandler, session: DataPlaneSession,
    allocator: ByteBufferAllocator
  ) -> (response: Frame, close: Bool) {
    switch admit(frame, handler: handler, session: session, allocator: allocator) {
    case .answer(let response, let close): (response, close)
    case .serve(let opcode, let grant):
      (serve(frame, opcode: opcode, grant: grant, handler: handler, allocator: allocator), false)
    }
  }

  /// Checks `frame` against the protocol and the connection's session (answering the
  /// authentication frames, which change it). Cheap: transports call it in arrival order on
  /// the connection's thread, so a request is admitted under the grant in force when it arrived.
  static func admit(
    _ frame: Frame, handler: any DataPlaneRequestHandler, session: DataPlaneSession,
    allocator: ByteBufferAllocator
  ) -> Admission {
    let header = frame.header
    func refuse(_ error: HeteroKVError, close: Bool = false) -> Admission {
      handler.rejected(error)
      return .answer(
        .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator),
        close: close)
    }
    if header.flags.contains(.response) {
      return refuse(HeteroKVError(.invalidArgument, "a response frame was sent to a server"))
    }
    guard let opcode = Opcode(rawValue: header.opcode) else {
      return refuse(HeteroKVError(.unknownOpcode, "opcode \(header.opcode) is not served"))
    }
    // The two authentication messages are tiny; their decoders need no other bound.
    let limits = DataPlaneLimits.standard
    switch opcode {
    case .challenge:
      do {
        _ = try ChallengeRequest(payload: frame.payload, limits: limits)
      } catch {
        return refuse(error)
      }
      var generator = SystemRandomNumberGenerator()
      let nonce = (0..<ChallengeResponse.nonceBytes).map { _ in
        UInt8.random(in: 0...255, using: &generator)
      }
      session.nonce = nonce
      return .answer(
        Frame(
          opcode: header.opcode, flags: .response, requestID: header.requestID,
          payload: ChallengeResponse(nonce: nonce).encoded(allocator: allocator)), close: false)
    case .authenticate:
      // A nonce serves one attempt; a refused proof closes the connection.
      guard let nonce = session.nonce else {
        return refuse(
          HeteroKVError(.unauthenticated, "authenticate: ask for a challenge first"), close: true)
      }
      session.nonce = nil
      // A refused proof also takes back any earlier grant of this connection.
      session.grant = nil
      do {
        let request = try AuthenticateRequest(payload: frame.payload, limits: limits)
        session.grant = try session.access.verify(request, nonce: nonce)
      } catch {
        return refuse(error, close: true)
      }
      return .answer(
        Frame(
          opcode: header.opcode, flags: .response, requestID: header.requestID,
          payload: AuthenticateResponse().encoded(allocator: allocator)), close: false)
    default:
      break
    }
    guard let grant = session.grant else {
      return refuse(
        HeteroKVError(
          .unauthenticated,
          "this node requires a credential: send challenge and authenticate before \(opcode.name)"
        ))
    }
    return .serve(opcode, grant)
  }

  /// Serves an admitted request: the handler's work, on whatever thread calls it.
  static func serve(
    _ frame: Frame, opcode: Opcode, grant: DataPlaneGrant, handler: any DataPlaneRequestHandler,
    allocator: ByteBufferAllocator
  ) -> Frame {
    let header = frame.header
    switch handler.handle(
      opcode: opcode, payload: frame.payload, allocator: allocator, grant: grant)
    {
    case .success(let payload):
      return Frame(
        opcode: header.opcode, flags: .response, requestID: header.requestID, payload: payload)
    case .failure(let error):
      return .error(error, opcode: header.opcode, requestID: header.requestID, allocator: allocator)
    }
  }
}
