import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HeteroKVSettings
import HeteroKVWire

/// How a gRPC control plane is secured: the cluster's shared token (sent as
/// `authorization: Bearer <token>`) and TLS files. Both are optional; a daemon with a token
/// refuses calls without it.
public struct ControlPlaneSecurity: Sendable, Hashable {
  /// The shared token; none: calls are not authenticated.
  public var token: String?
  /// TLS files; none: plaintext HTTP/2.
  public var tls: TLSSettings?

  public init(token: String? = nil, tls: TLSSettings? = nil) {
    self.token = token
    self.tls = tls
  }

  /// No token, no TLS.
  public static let none = ControlPlaneSecurity()

  /// What a cluster member proves on the memory nodes' data plane: the same token, as
  /// tenant `cluster`; none for an open cluster.
  public var dataPlaneCredential: DataPlaneCredential? {
    token.map { DataPlaneCredential(secret: $0) }
  }

  /// The server side of the TLS settings.
  package var serverTransportSecurity: HTTP2ServerTransport.Posix.TransportSecurity {
    guard let tls else { return .plaintext }
    let chain: [TLSConfig.CertificateSource] = [.file(path: tls.certificate, format: .pem)]
    let key: TLSConfig.PrivateKeySource = .file(path: tls.key, format: .pem)
    if tls.requireClientCertificates, let ca = tls.ca {
      return .mTLS(certificateChain: chain, privateKey: key) {
        $0.trustRoots = .certificates([.file(path: ca, format: .pem)])
      }
    }
    return .tls(certificateChain: chain, privateKey: key)
  }

  /// The client side of the TLS settings.
  var clientTransportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
    guard let tls else { return .plaintext }
    return .tls {
      if let ca = tls.ca { $0.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
      if tls.requireClientCertificates {
        $0.certificateChain = [.file(path: tls.certificate, format: .pem)]
        $0.privateKey = .file(path: tls.key, format: .pem)
      }
    }
  }

  /// Interceptors a server installs: the token check when there is a token.
  package var serverInterceptors: [any ServerInterceptor] {
    token.map { [BearerTokenCheck(token: $0)] } ?? []
  }

  /// Interceptors a client installs: the token header when there is a token.
  var clientInterceptors: [any ClientInterceptor] {
    token.map { [BearerTokenHeader(token: $0)] } ?? []
  }
}

/// Refuses every call whose `authorization` metadata is not `Bearer <token>`, but for the
/// health service's: liveness probes carry no credential, and it reveals only up or down.
struct BearerTokenCheck: ServerInterceptor {
  let expected: [UInt8]

  init(token: String) { expected = Array("Bearer \(token)".utf8) }

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>, context: ServerContext,
    next:
      @Sendable (StreamingServerRequest<Input>, ServerContext) async throws
      -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    if context.descriptor.service == Grpc_Health_V1_Health.descriptor {
      return try await next(request, context)
    }
    let presented = request.metadata[stringValues: "authorization"].first(where: { _ in true })
    guard let presented, constantTimeEqual(Array(presented.utf8), expected) else {
      throw RPCError(
        code: .unauthenticated,
        message: presented == nil
          ? "this cluster requires a token (security.token_env or security.token_file)"
          : "the token does not match the cluster's")
    }
    return try await next(request, context)
  }
}

/// Adds `authorization: Bearer <token>` to every call.
struct BearerTokenHeader: ClientInterceptor {
  let value: String

  init(token: String) { value = "Bearer \(token)" }

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>, context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws
      -> StreamingClientResponse<Output>
  ) async throws -> StreamingClientResponse<Output> {
    var request = request
    request.metadata.replaceOrAddString(value, forKey: "authorization")
    return try await next(request, context)
  }
}

/// A gRPC client over HTTP/2 (NIO) to one control-plane address, with the cluster's security.
public enum ControlPlaneClient {
  /// Runs `body` with a connected client to `address`, closing it afterwards.
  public static func with<Result: Sendable>(
    address: HostPort, security: ControlPlaneSecurity,
    _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let transport = try HTTP2ClientTransport.Posix(
      target: .dns(host: address.host, port: address.port),
      transportSecurity: security.clientTransportSecurity,
      config: .defaults {
        // An IP address cannot be sent as SNI: the configured server name is sent (and
        // verified) instead.
        if let name = security.tls?.serverName { $0.http2.authority = name }
      })
    return try await withGRPCClient(
      transport: transport, interceptors: security.clientInterceptors, handleClient: body)
  }
}
