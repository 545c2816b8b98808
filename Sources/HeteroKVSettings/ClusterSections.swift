import Foundation
import HeteroKVCore
import HeteroKVWire

/// The coordinator's addresses, state directory and lease timing.
public struct CoordinatorSettings: Sendable, Hashable {
  /// gRPC listen address; members and the admin CLI connect here.
  public var control: HostPort
  /// Prometheus `/metrics` listen address; none when absent.
  public var metrics: HostPort?
  /// Directory of the persistent state (log and snapshots); created if missing.
  public var stateDirectory: String
  /// How long a lease lasts after a registration or heartbeat, in seconds.
  public var leaseSeconds: Double
  /// How often members renew their lease, in seconds (less than the lease).
  public var heartbeatSeconds: Double
  /// Log entries after which the state is snapshotted and the log restarted.
  public var snapshotEvery: Int
  /// Where the state lives: a local directory (the default) or etcd.
  public var store: CoordinatorStoreKind = .file
  /// The etcd cluster and key prefix, when `store` is etcd.
  public var etcd: EtcdSettings?
  /// Coordinator processes sharing one etcd store: one leads, the others stand by. Empty for
  /// a single coordinator at `control`.
  public var replicas: [CoordinatorReplica] = []

  /// Every address a coordinator may answer at: the replicas' control addresses, or
  /// `control` alone. Members and the admin CLI try them and follow the leader's redirect.
  public var controlAddresses: [HostPort] { replicas.isEmpty ? [control] : replicas.map(\.control) }

  public init(
    control: HostPort, metrics: HostPort? = nil, stateDirectory: String, leaseSeconds: Double = 10,
    heartbeatSeconds: Double = 3, snapshotEvery: Int = 1024
  ) {
    self.control = control
    self.metrics = metrics
    self.stateDirectory = stateDirectory
    self.leaseSeconds = leaseSeconds
    self.heartbeatSeconds = heartbeatSeconds
    self.snapshotEvery = snapshotEvery
  }
}

/// Where the coordinator keeps its state.
public enum CoordinatorStoreKind: String, Sendable, Hashable, CaseIterable, Codable {
  /// A directory on the coordinator's machine (snapshot and log): one coordinator.
  case file
  /// An etcd cluster: several coordinators, one leading, standbys taking over.
  case etcd
}

/// The etcd cluster a coordinator keeps its state in.
public struct EtcdSettings: Sendable, Hashable {
  /// Client addresses of the etcd members.
  public var endpoints: [HostPort]
  /// Key prefix of this cluster's state (e.g. `/heterokv/prod`).
  public var prefix: String
  /// TLS toward etcd: the members' CA, and this cluster's client certificate where etcd
  /// authenticates clients by certificate; none: plaintext.
  public var tls: EtcdTLSSettings?
  /// The etcd user the coordinator authenticates as (where etcd has `auth enable`), and where
  /// its password comes from: an environment variable or a file (never the cluster file).
  public var user: String?
  public var passwordEnv: String?
  public var passwordFile: String?

  public init(endpoints: [HostPort], prefix: String, tls: EtcdTLSSettings? = nil) {
    self.endpoints = endpoints
    self.prefix = prefix
    self.tls = tls
  }
}

/// PEM files for TLS toward etcd (`coordinator.etcd.tls`).
public struct EtcdTLSSettings: Sendable, Hashable {
  public var ca: String?
  public var certificate: String?
  public var key: String?
  public var serverName: String?

  public init(
    ca: String? = nil, certificate: String? = nil, key: String? = nil, serverName: String? = nil
  ) {
    self.ca = ca
    self.certificate = certificate
    self.key = key
    self.serverName = serverName
  }
}

/// One coordinator process of a replicated coordinator.
public struct CoordinatorReplica: Sendable, Hashable {
  public var id: String
  /// Its gRPC listen address.
  public var control: HostPort
  /// Its Prometheus `/metrics` listen address, if any.
  public var metrics: HostPort?

  public init(id: String, control: HostPort, metrics: HostPort? = nil) {
    self.id = id
    self.control = control
    self.metrics = metrics
  }
}

/// How the worker codes keys for approximate scoring.
public enum KeyCodecKind: String, Sendable, Hashable, CaseIterable, Codable {
  /// Product quantization (HCAttention): a code per group of dimensions.
  case pq
  /// Per-group scalar quantization (KIVI-style).
  case scalar
}

/// The worker's settings: its addresses and how it codes and keeps keys.
public struct WorkerSettings: Sendable, Hashable {
  /// gRPC listen address of the engine API; none when the worker is only a library.
  public var control: HostPort?
  /// Prometheus `/metrics` listen address; none when absent.
  public var metrics: HostPort?
  /// Key codec for approximate scores.
  public var keyCodec: KeyCodecKind
  /// Bits per code: the codebook index (pq) or the quantized value (scalar).
  public var keyBits: Int
  /// Head dimensions per code group; divides the model's head dimension.
  public var groupSize: Int
  /// Most recent tokens every head keeps exactly.
  public var window: Int
  /// First tokens (attention sinks) every head keeps exactly.
  public var sinks: Int
  /// Share of the approximate softmax mass the kept tokens must hold; nil: the policy's
  /// recommended (`RecommendedSettings.tau(for:)`).
  public var tau: Double?
  /// hcattention: also bound the tokens a step keeps by the head's budget cap. HCAttention
  /// keeps the whole tau-mass set (its memory budget is the key codes); the cap bounds what a
  /// step moves at the price of fidelity.
  public var capSelection: Bool
  /// How kept tokens become the context vector: `renormalized` (the approximate weights go
  /// to the memory nodes) or `exact` (the query goes; the nodes re-score the kept tokens with
  /// their fp16 keys, so the output is exact attention over the kept set).
  public var outputMode: HCAttentionOutputMode = .exact
  /// hcattention: spend what the budget leaves over the codes on codes twice as fine for the
  /// heads whose keys the coarse codes reconstruct worst (`finer_codes`).
  public var finerCodes = true
  /// pq: codebooks trained where distance is score error over the prefill's last queries
  /// (`query_aware_codes`; needs the engine to send observation queries).
  public var queryAwareCodes = false
  /// Exact output: the tokens a step does not keep enter the output as their approximate mass
  /// (from the codes) times the head's mean value, a running sum the worker keeps
  /// (`unkept_estimate`), instead of their mass going to the kept tokens.
  public var unkeptEstimate = true
  /// What a step's tau-mass selection is made over (`selection`): each query head's own set
  /// (`query_head`, the paper) or one set per KV head from the group's mean probability
  /// (`kv_group`: one selection a group instead of one a head, and no union).
  public var selection: SelectionScope = .kvGroup
  /// When a put to the memory tier counts as stored (`ack_replicas`).
  public var ackReplicas: ReplicaAcknowledgement = .allLive

  public init(
    control: HostPort? = nil, metrics: HostPort? = nil, keyCodec: KeyCodecKind = .pq,
    keyBits: Int = 8, groupSize: Int = 4, window: Int = 64, sinks: Int = 4, tau: Double? = nil,
    capSelection: Bool = false
  ) {
    self.control = control
    self.metrics = metrics
    self.keyCodec = keyCodec
    self.keyBits = keyBits
    self.groupSize = groupSize
    self.window = window
    self.sinks = sinks
    self.tau = tau
    self.capSelection = capSelection
  }
}

/// The configuration the project recommends for a real model, measured in docs/eval.md
/// ("SmolLM2 on real text"): the defaults of `WorkerSettings` and `BudgetSettings`, so every
/// command (`hkv generate`, `hkv needle`, `hkv fidelity`, `hkv eval`, `hkv demo`), the worker
/// daemon and a cluster file that leaves a key out run the same thing.
public enum RecommendedSettings {
  /// One-byte pq codes over 4 dims (finer where the budget leaves room, hcattention), 64
  /// recent and 4 sink tokens exact, exact output (the memory nodes re-score kept tokens with
  /// their fp16 keys), one kept set per KV head and the unkept tokens estimated; tau per
  /// policy.
  public static var worker: WorkerSettings { WorkerSettings() }

  /// The budgets the model commands and benchmarks run `policy` with at `memoryFraction`:
  /// at least 16 tokens a head, and recall for heterocache's compressed heads (which needs
  /// exact output: see ``BudgetSettings/recallingOnly(with:)``).
  public static func budgets(policy: BudgetPolicyKind, memoryFraction: Double) -> BudgetSettings {
    var b = BudgetSettings(policy: policy, memoryFraction: memoryFraction, minTokens: 16)
    b.recall = policy == .heterocache
    return b
  }

  /// The tau a policy runs at when none is set. HCAttention's finer codes, the unkept
  /// estimate and one kept set per KV head hold fidelity at 0.985 with about 12-14% of the
  /// context kept; HeteroCache's compressed heads recall with coarse codes only and need 0.999
  /// (docs/benchmarks.md).
  public static func tau(for policy: BudgetPolicyKind) -> Double {
    switch policy {
    case .hcattention: 0.985
    case .heterocache, .uniform: 0.999
    }
  }
}

extension WorkerSettings {
  /// The tau `policy` runs at: the one set, else the policy's recommended.
  public func tau(for policy: BudgetPolicyKind) -> Double {
    tau ?? RecommendedSettings.tau(for: policy)
  }

  /// The key index these settings describe (codec, sizes, exact sinks and window): what the
  /// worker builds for each coded head and the evaluation harness builds to match it.
  public var keyIndex: KeyIndexRecipe {
    var recipe = KeyIndexRecipe(
      codec: keyCodec == .pq ? .pq : .scalar, bits: keyBits, groupSize: groupSize, sinks: sinks,
      window: window)
    recipe.queryAware = queryAwareCodes
    return recipe
  }

  /// What one head's key index costs the worker at `tokens` tokens, as a share of the head's
  /// fp16 K+V (`KeyIndexRecipe.share`): the `budgets.full_head_cost` that charges a coded head
  /// what it really holds.
  /// With `budget` (and the `heldRows` fp16 rows a head holds), the index sized to it, as the
  /// worker sizes its codes (`KeyIndexRecipe.fitting`).
  public func keyCodeShare(
    headDim d: Int, tokens n: Int, fitting budget: Double? = nil, heldRows: Int = 0
  ) -> Double {
    // The value sum of the unkept estimate: d floats and a count.
    let estimate = unkeptEstimate && outputMode == .exact ? Double(d * 4 + 8) : 0
    let recipe =
      budget.map { keyIndex.fitting(budget: $0, headDim: d, tokens: n, heldRows: heldRows) }
      ?? keyIndex
    return min(1, recipe.share(headDim: d, tokens: n) + estimate / Double(max(1, n) * 4 * d))
  }
}

/// When a put counts as stored (and the worker may forget the rows it shipped).
public enum ReplicaAcknowledgement: String, Sendable, Hashable, CaseIterable, Codable {
  /// Every replica the placement names that is not marked down holds the rows; a live
  /// replica that refuses them fails the head.
  case allLive = "all_live"
  /// One replica holds them (faster to acknowledge; a second failure before repair can lose
  /// rows that only one node received).
  case one
}

/// The rule that turns head profiles into per-head token budgets.
public enum BudgetPolicyKind: String, Sendable, Hashable, CaseIterable, Codable {
  /// Budgets weighted by 1/stability over anchor and satellite heads; pivots and volatile heads
  /// keep their full context.
  case heterocache
  /// Every head scored from key codes; the cap bounds the tokens a step may keep.
  case hcattention
  /// The same cap for every head.
  case uniform
}

/// The budget policy and its bounds.
public struct BudgetSettings: Sendable, Hashable {
  /// The rule.
  public var policy: BudgetPolicyKind
  /// Share of fp16 K+V the worker may keep, in (0, 1].
  public var memoryFraction: Double
  /// Fewest tokens a head is given (bounded by the context).
  public var minTokens: Int
  /// Most tokens a head is given; none: the context.
  public var maxTokens: Int?
  /// What a full-context head costs the worker as a share of fp16 K+V (its key codes).
  public var fullHeadCost: Double
  /// Stability at or above which an unclustered head is an anchor (else volatile).
  public var stabilityThreshold: Double
  /// Similarity at or above which two heads of a layer may share a star cluster.
  public var similarityThreshold: Double
  /// Decode steps between re-profiles the worker reports.
  public var profileIntervalSteps: Int
  /// HeteroCache: compressed heads keep key codes too, and each step recalls from the memory
  /// tier the tokens their tau-mass set holds outside the cache (exact output mode). Their
  /// codes are charged like a full head's, so caps are smaller. On by default wherever the
  /// codes fit (`fullHeadCost < memoryFraction`); off, a static cache (the paper's) misses what
  /// decode attends to after the prefill. A cluster file with renormalized output defaults it
  /// off.
  public var recall: Bool

  public init(
    policy: BudgetPolicyKind = .heterocache, memoryFraction: Double = 0.3, minTokens: Int = 64,
    maxTokens: Int? = nil, fullHeadCost: Double = 0.125, stabilityThreshold: Double = 0.5,
    similarityThreshold: Double = 0.6, profileIntervalSteps: Int = 256
  ) {
    self.policy = policy
    self.memoryFraction = memoryFraction
    self.minTokens = minTokens
    self.maxTokens = maxTokens
    self.fullHeadCost = fullHeadCost
    self.stabilityThreshold = stabilityThreshold
    self.similarityThreshold = similarityThreshold
    self.profileIntervalSteps = profileIntervalSteps
    recall = fullHeadCost < memoryFraction
  }
}

extension BudgetSettings {
  /// These budgets with recall kept only for exact output (the recalled tokens are re-scored
  /// with fp16 keys): renormalized weights run static caches instead of being refused.
  public func recallingOnly(with outputMode: HCAttentionOutputMode) -> BudgetSettings {
    var b = self
    b.recall = recall && outputMode == .exact
    return b
  }

  /// These budgets with coded heads charged what `worker`'s index holds at `tokens` tokens
  /// plus the `heldRows` fp16 decode rows every head holds before shipping them, and recall
  /// kept only where every head's codes fit under the memory fraction (below it, compressed
  /// heads keep static caches): how clusters started in one process are planned.
  public func chargingKeyCodes(
    of worker: WorkerSettings, headDim: Int, tokens: Int, heldRows: Int
  ) -> BudgetSettings {
    func cost(fitting budget: Double?) -> Double {
      min(
        1,
        worker.keyCodeShare(headDim: headDim, tokens: tokens, fitting: budget, heldRows: heldRows)
          + Double(heldRows) / Double(max(1, tokens)))
    }
    var b = self
    // Recall sizes the codes to the fraction (as the worker then does); where even those do
    // not fit, static caches, and the codes as configured are what full heads are charged.
    let fitted = cost(fitting: memoryFraction)
    b.recall = recall && fitted < memoryFraction
    b.fullHeadCost = b.recall ? fitted : cost(fitting: nil)
    return b
  }

  /// The head profiler's thresholds from these settings: what the worker profiles with and
  /// what an offline calibration must use to agree with it.
  public var heteroCache: HeteroCacheConfiguration {
    var c = HeteroCacheConfiguration()
    c.stabilityThreshold = stabilityThreshold
    c.similarityThreshold = similarityThreshold
    return c
  }
}

/// TLS files for the gRPC control plane.
public struct TLSSettings: Sendable, Hashable {
  /// PEM certificate chain the server presents.
  public var certificate: String
  /// PEM private key of that certificate.
  public var key: String
  /// PEM CA bundle clients verify the server with (and the server verifies clients with,
  /// when `requireClientCertificates`); none: the system's roots.
  public var ca: String?
  /// Whether servers demand client certificates (mutual TLS).
  public var requireClientCertificates: Bool
  /// The name clients expect in server certificates (sent as SNI and verified); none: the
  /// host of the address dialled. Needed where servers are dialled by IP address, since an IP
  /// cannot be sent as SNI.
  public var serverName: String?

  public init(
    certificate: String, key: String, ca: String? = nil, requireClientCertificates: Bool = false,
    serverName: String? = nil
  ) {
    self.certificate = certificate
    self.key = key
    self.ca = ca
    self.requireClientCertificates = requireClientCertificates
    self.serverName = serverName
  }
}

/// A tenant of the data plane: its own token, the namespaces it may use and the row bytes it
/// may store on each memory node.
public struct TenantSettings: Sendable, Hashable {
  /// The tenant's name (what its clients present).
  public var name: String
  /// Environment variable holding its token.
  public var tokenEnvironmentVariable: String?
  /// File holding its token (first line; owner-only permissions).
  public var tokenFile: String?
  /// The namespaces it may read, write and drop.
  public var namespaces: [UInt32]
  /// Row bytes it may store on each memory node; none: no quota.
  public var quotaBytes: Int?

  public init(
    name: String, tokenEnvironmentVariable: String? = nil, tokenFile: String? = nil,
    namespaces: [UInt32], quotaBytes: Int? = nil
  ) {
    self.name = name
    self.tokenEnvironmentVariable = tokenEnvironmentVariable
    self.tokenFile = tokenFile
    self.namespaces = namespaces
    self.quotaBytes = quotaBytes
  }

  /// The tenant's token; throws when its configured source gives none.
  public func resolveToken(environment: [String: String] = ProcessInfo.processInfo.environment)
    throws(ConfigurationError) -> String
  {
    let source = SecuritySettings(
      tokenEnvironmentVariable: tokenEnvironmentVariable, tokenFile: tokenFile)
    guard let token = try source.resolveToken(environment: environment) else {
      throw ConfigurationError(problems: [
        ConfigurationProblem(
          file: "<security>", keyPath: "security.tenants", line: nil,
          message: "tenant \(name) has no token_env or token_file")
      ])
    }
    return token
  }
}

/// How control-plane calls are authenticated: a shared token and, optionally, TLS.
public struct SecuritySettings: Sendable, Hashable {
  /// Environment variable holding the shared token.
  public var tokenEnvironmentVariable: String?
  /// File holding the shared token (its first line); must not be readable by group or others.
  public var tokenFile: String?
  /// TLS for gRPC; none: plaintext.
  public var tls: TLSSettings?
  /// Data-plane tenants besides the cluster's own members (who use the shared token).
  public var tenants: [TenantSettings] = []

  public init(
    tokenEnvironmentVariable: String? = nil, tokenFile: String? = nil, tls: TLSSettings? = nil,
    tenants: [TenantSettings] = []
  ) {
    self.tokenEnvironmentVariable = tokenEnvironmentVariable
    self.tokenFile = tokenFile
    self.tls = tls
    self.tenants = tenants
  }

  /// The shared token: the environment variable when it is set, else the file; none when
  /// neither is configured. Throws when a configured source cannot give a token, so a daemon
  /// never starts open by accident.
  public func resolveToken(environment: [String: String] = ProcessInfo.processInfo.environment)
    throws(ConfigurationError) -> String?
  {
    if let name = tokenEnvironmentVariable, let value = environment[name],
      !value.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
    {
      return value.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    func fail(_ key: String, _ message: String) -> ConfigurationError {
      ConfigurationError(problems: [
        ConfigurationProblem(file: "<security>", keyPath: key, line: nil, message: message)
      ])
    }
    if let path = tokenFile {
      guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
        let data = FileManager.default.contents(atPath: path)
      else { throw fail("security.token_file", "cannot read \(path)") }
      // systemd's credentials (LoadCredential=) are 0400 files that the service user may
      // read through an ACL, whose mask shows as group bits: there, only "other" bits and
      // write bits are refused. Elsewhere the file must be the owner's alone.
      let credentials = environment["CREDENTIALS_DIRECTORY"]
      let inCredentials =
        credentials.map {
          !$0.isEmpty
            && URL(fileURLWithPath: path).deletingLastPathComponent().standardizedFileURL.path
              == URL(fileURLWithPath: $0).standardizedFileURL.path
        } ?? false
      let refused = inCredentials ? 0o027 : 0o077
      if let mode = attributes[.posixPermissions] as? Int, mode & refused != 0 {
        throw fail(
          "security.token_file",
          "\(path) is readable by group or others (mode \(String(mode, radix: 8))); chmod 600 it")
      }
      let token =
        String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first
        .map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
      guard !token.isEmpty else { throw fail("security.token_file", "\(path) holds no token") }
      return token
    }
    if let name = tokenEnvironmentVariable {
      throw fail("security.token_env", "the environment variable \(name) is not set (or empty)")
    }
    return nil
  }
}
