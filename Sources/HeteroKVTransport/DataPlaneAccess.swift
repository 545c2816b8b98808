import HeteroKVCore
import HeteroKVWire

/// What one authenticated connection may touch: its tenant's namespaces (all of them for the
/// cluster's own members) and the bytes the tenant may store on this node.
public struct DataPlaneGrant: Sendable, Hashable {
  /// The tenant the connection acts for.
  public var tenant: String
  /// Namespaces it may read, write and drop; nil: every namespace.
  public var namespaces: Set<UInt32>?
  /// Row bytes the tenant may store on this node over all its namespaces; nil: no quota.
  public var quotaBytes: Int?

  public init(tenant: String, namespaces: Set<UInt32>? = nil, quotaBytes: Int? = nil) {
    self.tenant = tenant
    self.namespaces = namespaces
    self.quotaBytes = quotaBytes
  }

  /// Everything: a node without credentials serves every connection with this grant.
  public static let unrestricted = DataPlaneGrant(tenant: DataPlaneCredential.clusterTenant)

  /// Whether the connection may touch `namespace`.
  public func allows(_ namespace: UInt32) -> Bool { namespaces?.contains(namespace) ?? true }

  /// Throws `permissionDenied` unless the connection may touch `namespace`.
  public func check(_ namespace: UInt32, _ what: String) throws(HeteroKVError) {
    guard allows(namespace) else {
      throw HeteroKVError(
        .permissionDenied, "\(what): tenant \(tenant) may not use namespace \(namespace)")
    }
  }
}

/// Who may use a node's data plane: each tenant's secret and grant. A node built with none
/// serves every connection (the cluster file sets no token); with any, a connection must
/// authenticate before its first other frame.
public struct DataPlaneAccess: Sendable, Hashable {
  /// One tenant: its secret and what it may touch.
  public struct Tenant: Sendable, Hashable {
    public var secret: String
    public var grant: DataPlaneGrant

    public init(secret: String, grant: DataPlaneGrant) {
      self.secret = secret
      self.grant = grant
    }
  }

  /// Tenants by name.
  public let tenants: [String: Tenant]

  /// Access for the cluster token (the tenant `cluster`, every namespace) and `tenants`.
  public init(clusterToken: String?, tenants: [String: Tenant] = [:]) {
    var all = tenants
    if let clusterToken {
      all[DataPlaneCredential.clusterTenant] = Tenant(secret: clusterToken, grant: .unrestricted)
    }
    self.tenants = all
  }

  /// Whether connections must authenticate.
  public var required: Bool { !tenants.isEmpty }

  /// The grant of `request` over `nonce`, or `unauthenticated` (the same answer for an
  /// unknown tenant and a wrong proof, so names cannot be probed).
  func verify(_ request: AuthenticateRequest, nonce: [UInt8]) throws(HeteroKVError)
    -> DataPlaneGrant
  {
    let refused = HeteroKVError(.unauthenticated, "authenticate: the credential was refused")
    guard let tenant = tenants[request.tenant] else { throw refused }
    let expected = DataPlaneCredential(tenant: request.tenant, secret: tenant.secret)
      .proof(nonce: nonce)
    guard constantTimeEqual(expected, request.proof) else { throw refused }
    return tenant.grant
  }
}

/// One connection's standing on the server: the nonce it was given and, once it proved a
/// credential, its grant. Owned by the connection (one event loop, or one thread).
final class DataPlaneSession {
  let access: DataPlaneAccess
  var nonce: [UInt8]?
  var grant: DataPlaneGrant?

  init(access: DataPlaneAccess) {
    self.access = access
    self.grant = access.required ? nil : .unrestricted
  }
}

extension DataPlaneConnection {
  /// Proves `credential` on this connection (challenge, then authenticate): the first thing
  /// a client does on a node that requires credentials.
  public func authenticate(_ credential: DataPlaneCredential, timeout: Duration? = nil)
    async throws(HeteroKVError)
  {
    let challenge = try await send(ChallengeRequest(), timeout: timeout)
    _ = try await send(
      AuthenticateRequest(
        tenant: credential.tenant, proof: credential.proof(nonce: challenge.nonce)),
      timeout: timeout)
  }
}
