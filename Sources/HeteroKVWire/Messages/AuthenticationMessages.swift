import Crypto
import HeteroKVCore
import NIOCore

/// Asks the node for a nonce to authenticate over. Empty payload.
public struct ChallengeRequest: DataPlaneRequest, Hashable {
  public typealias Response = ChallengeResponse
  public static let opcode = Opcode.challenge

  public init() {}
  public func encode(into buffer: inout ByteBuffer) {}
  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    try PayloadReader(payload, what: "challenge").finish()
  }
}

/// A fresh nonce, valid for one `authenticate` on this connection.
///
/// Wire: nonce (32 bytes).
public struct ChallengeResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.challenge
  /// Bytes of a nonce.
  public static let nonceBytes = 32
  /// The nonce.
  public var nonce: [UInt8]

  public init(nonce: [UInt8]) { self.nonce = nonce }

  public func encode(into buffer: inout ByteBuffer) { buffer.writeBytes(nonce) }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var reader = PayloadReader(payload, what: "challenge response")
    nonce = Array(buffer: try reader.slice("nonce", count: Self.nonceBytes, stride: 1))
    try reader.finish()
  }
}

/// Proves a tenant's credential: HMAC-SHA256 keyed with the tenant's token over the
/// connection's nonce (see ``DataPlaneCredential/proof(nonce:)``); the token itself never
/// crosses the wire.
///
/// Wire: tenant length u16 · tenant (UTF-8, at most 128 bytes) · proof (32 bytes).
public struct AuthenticateRequest: DataPlaneRequest, Hashable {
  public typealias Response = AuthenticateResponse
  public static let opcode = Opcode.authenticate
  /// Longest tenant name, in bytes.
  public static let maxTenantBytes = 128
  /// The tenant the connection will act for.
  public var tenant: String
  /// The HMAC over the nonce.
  public var proof: [UInt8]

  public init(tenant: String, proof: [UInt8]) {
    self.tenant = tenant
    self.proof = proof
  }

  public func encode(into buffer: inout ByteBuffer) {
    let name = Array(tenant.utf8.prefix(Self.maxTenantBytes))
    buffer.writeInteger(UInt16(name.count), endianness: .little)
    buffer.writeBytes(name)
    buffer.writeBytes(proof)
  }

  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    var reader = PayloadReader(payload, what: "authenticate")
    let length = Int(try reader.integer("tenant length", as: UInt16.self))
    guard length <= Self.maxTenantBytes else {
      throw HeteroKVError(
        .invalidArgument, "authenticate: a tenant name is at most \(Self.maxTenantBytes) bytes")
    }
    let name = try reader.slice("tenant", count: length, stride: 1)
    guard let tenant = name.getString(at: name.readerIndex, length: length) else {
      throw HeteroKVError(.malformedFrame, "authenticate: the tenant name is not UTF-8")
    }
    self.tenant = tenant
    proof = Array(buffer: try reader.slice("proof", count: 32, stride: 1))
    try reader.finish()
  }
}

/// The node accepted the proof. Empty payload.
public struct AuthenticateResponse: DataPlaneMessage, Hashable {
  public static let opcode = Opcode.authenticate
  public init() {}
  public func encode(into buffer: inout ByteBuffer) {}
  public init(payload: ByteBuffer, limits: DataPlaneLimits) throws(HeteroKVError) {
    try PayloadReader(payload, what: "authenticate response").finish()
  }
}

/// Compares two secrets (tokens, proofs) without stopping at the first difference, so the
/// time taken does not reveal how much of a guess was right. Every credential check uses it.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  guard a.count == b.count else { return false }
  var difference: UInt8 = 0
  for i in a.indices { difference |= a[i] ^ b[i] }
  return difference == 0
}

/// What a client holds to authenticate its data-plane connections: a tenant name and its
/// secret (the cluster token for the cluster's own members).
public struct DataPlaneCredential: Sendable, Hashable {
  /// The tenant name the cluster's own members (workers with the shared token) use.
  public static let clusterTenant = "cluster"
  /// Who the connection acts for.
  public var tenant: String
  /// The shared secret (never sent).
  public var secret: String

  public init(tenant: String = DataPlaneCredential.clusterTenant, secret: String) {
    self.tenant = tenant
    self.secret = secret
  }

  /// HMAC-SHA256 keyed with the secret over a domain label, the tenant and the nonce, so a
  /// proof is bound to this protocol, this tenant and this one connection.
  public func proof(nonce: [UInt8]) -> [UInt8] {
    Self.proof(secret: secret, tenant: tenant, nonce: nonce)
  }

  static func proof(secret: String, tenant: String, nonce: [UInt8]) -> [UInt8] {
    var message = Array("hkv-data-plane-v1\u{0}".utf8)
    message += Array(tenant.utf8) + [0] + nonce
    let mac = HMAC<SHA256>.authenticationCode(
      for: message, using: SymmetricKey(data: Array(secret.utf8)))
    return Array(mac)
  }
}
