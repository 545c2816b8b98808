import HeteroKVCore
import HeteroKVWire
import Yams

extension ClusterConfiguration {
  /// `model: <preset>` or a mapping with the geometry.
  static func readModel(_ reader: YAMLReader) -> ModelGeometry? {
    guard let node = reader.child("model") else { return nil }
    if let preset = node.scalar?.string {
      do {
        return try ModelGeometry.preset(named: preset)
      } catch {
        let names = ModelGeometry.presets.map(\.name).joined(separator: " | ")
        reader.problem(
          "model", "unknown preset \"\(preset)\"; expected one of \(names) or a mapping")
        return nil
      }
    }
    guard let r = reader.section("model") else { return nil }
    r.rejectUnknownKeys(["name", "layers", "query_heads", "kv_heads", "head_dim"])
    let name = r.string("name") ?? "custom"
    let layers = r.int("layers", required: true, range: 1...1024)
    let queryHeads = r.int("query_heads", required: true, range: 1...1024)
    let kvHeads = r.int("kv_heads", required: true, range: 1...1024)
    let headDim = r.int("head_dim", required: true, range: 2...1024)
    guard let layers, let queryHeads, let kvHeads, let headDim else { return nil }
    do {
      return try ModelGeometry(
        name: name, layers: layers, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim)
    } catch {
      r.problem("kv_heads", "\(error)")
      return nil
    }
  }

  static func readCoordinator(_ r: YAMLReader) -> CoordinatorSettings? {
    r.rejectUnknownKeys([
      "control", "metrics", "state_dir", "lease", "heartbeat", "snapshot_every", "store", "etcd",
      "replicas",
    ])
    let start = r.log.problems.count
    let store: CoordinatorStoreKind = r.choice("store") ?? .file
    // Replicas name their own control addresses; `control` is then unused and optional.
    let replicated = !(r.child("replicas")?.sequence?.isEmpty ?? true)
    let control = r.hostPort("control", required: !replicated)
    let metrics = r.hostPort("metrics")
    let stateDir = r.string("state_dir", required: store == .file)
    let lease = r.seconds("lease", range: 0.1...3600) ?? 10
    let heartbeat = r.seconds("heartbeat", range: 0.05...3600) ?? min(3, lease / 3)
    let snapshotEvery = r.int("snapshot_every", range: 16...1_000_000) ?? 1024
    if heartbeat >= lease {
      r.problem("heartbeat", "must be shorter than the lease (\(lease)s), got \(heartbeat)s")
    }
    var etcd: EtcdSettings?
    if let section = r.section("etcd", required: store == .etcd) {
      section.rejectUnknownKeys([
        "endpoints", "prefix", "tls", "user", "password_env", "password_file",
      ])
      var endpoints: [HostPort] = []
      if let items = section.child("endpoints")?.sequence, !items.isEmpty {
        for (i, item) in items.enumerated() {
          if let text = item.scalar?.string, let address = HostPort(text), address.port > 0 {
            endpoints.append(address)
          } else {
            section.problem("endpoints", "entry \(i) is not host:port")
          }
        }
      } else {
        section.problem("endpoints", "a list of etcd client addresses (host:port) is required")
      }
      let prefix = section.string("prefix") ?? "/heterokv"
      if !prefix.hasPrefix("/") || prefix.hasSuffix("/") {
        section.problem("prefix", "must start with / and not end with one, got \"\(prefix)\"")
      }
      var tls: EtcdTLSSettings?
      if let t = section.section("tls") {
        t.rejectUnknownKeys(["ca", "cert", "key", "server_name"])
        tls = EtcdTLSSettings(
          ca: t.string("ca"), certificate: t.string("cert"), key: t.string("key"),
          serverName: t.string("server_name"))
        if (tls?.certificate == nil) != (tls?.key == nil) {
          t.problem("cert", "a client certificate needs its key (cert and key together)")
        }
      }
      etcd = EtcdSettings(endpoints: endpoints, prefix: prefix, tls: tls)
      etcd?.user = section.string("user")
      etcd?.passwordEnv = section.string("password_env")
      etcd?.passwordFile = section.string("password_file")
      if etcd?.user != nil && (etcd?.passwordEnv == nil) == (etcd?.passwordFile == nil) {
        section.problem(
          "user", "give the password by exactly one of password_env and password_file")
      }
    }
    var replicas: [CoordinatorReplica] = []
    for entry in r.list("replicas") {
      entry.rejectUnknownKeys(["id", "control", "metrics"])
      guard let id = entry.string("id", required: true),
        let address = entry.hostPort("control", required: true)
      else { continue }
      if replicas.contains(where: { $0.id == id }) {
        entry.problem("id", "\"\(id)\" is used twice")
      }
      replicas.append(
        CoordinatorReplica(id: id, control: address, metrics: entry.hostPort("metrics")))
    }
    if !replicas.isEmpty && store != .etcd {
      r.problem("replicas", "several coordinators need store: etcd (a file store has one owner)")
    }
    guard let control = control ?? replicas.first?.control, r.log.problems.count == start
    else { return nil }
    var settings = CoordinatorSettings(
      control: control, metrics: metrics, stateDirectory: stateDir ?? "", leaseSeconds: lease,
      heartbeatSeconds: heartbeat, snapshotEvery: snapshotEvery)
    settings.store = store
    settings.etcd = etcd
    settings.replicas = replicas
    return settings
  }

  static func readWorker(_ r: YAMLReader, model: ModelGeometry?) -> WorkerSettings? {
    r.rejectUnknownKeys([
      "control", "metrics", "key_codec", "key_bits", "group_size", "window", "sinks", "tau",
      "cap_selection", "output_mode", "ack_replicas", "finer_codes", "query_aware_codes",
      "unkept_estimate", "selection",
    ])
    let defaults = WorkerSettings()
    let start = r.log.problems.count
    let codec: KeyCodecKind? = r.has("key_codec") ? r.choice("key_codec") : defaults.keyCodec
    let bits = r.int("key_bits", range: 1...16) ?? defaults.keyBits
    let group = r.int("group_size", range: 1...1024) ?? defaults.groupSize
    if let codec {
      let allowed = codec == .pq ? [4, 8, 12, 16] : [2, 4, 8]
      if !allowed.contains(bits) {
        r.problem(
          "key_bits",
          "\(codec.rawValue) codes take \(allowed.map(String.init).joined(separator: ", ")) bits, got \(bits)"
        )
      }
    }
    if let model, model.headDim % group != 0 {
      r.problem(
        "group_size",
        "must divide the head dimension \(model.headDim) of \(model.name), got \(group)")
    }
    var settings = WorkerSettings(
      control: r.hostPort("control"), metrics: r.hostPort("metrics"),
      keyCodec: codec ?? defaults.keyCodec, keyBits: bits, groupSize: group,
      window: r.int("window", range: 0...1 << 20) ?? defaults.window,
      sinks: r.int("sinks", range: 0...1 << 16) ?? defaults.sinks,
      tau: r.double("tau", range: 0.5...1) ?? defaults.tau,
      capSelection: r.bool("cap_selection") ?? defaults.capSelection)
    // `raw` is an evaluation baseline, not a mode a worker serves.
    if let mode: HCAttentionOutputMode = r.choice("output_mode", among: [.renormalized, .exact]) {
      settings.outputMode = mode
    }
    if let ack: ReplicaAcknowledgement = r.choice("ack_replicas") { settings.ackReplicas = ack }
    settings.finerCodes = r.bool("finer_codes") ?? defaults.finerCodes
    settings.queryAwareCodes = r.bool("query_aware_codes") ?? defaults.queryAwareCodes
    settings.unkeptEstimate = r.bool("unkept_estimate") ?? defaults.unkeptEstimate
    if let scope: SelectionScope = r.choice("selection") { settings.selection = scope }
    return r.log.problems.count == start ? settings : nil
  }

  static func readBudgets(_ r: YAMLReader) -> BudgetSettings? {
    r.rejectUnknownKeys([
      "policy", "memory_fraction", "min_tokens", "max_tokens", "full_head_cost",
      "stability_threshold", "similarity_threshold", "profile_interval_steps", "recall",
    ])
    let d = BudgetSettings()
    let start = r.log.problems.count
    let policy: BudgetPolicyKind? = r.has("policy") ? r.choice("policy") : d.policy
    let fraction = r.double("memory_fraction", range: 0.001...1) ?? d.memoryFraction
    let minTokens = r.int("min_tokens", range: 0...1 << 30) ?? d.minTokens
    let maxTokens = r.int("max_tokens", range: 1...1 << 40)
    if let maxTokens, maxTokens < minTokens {
      r.problem("max_tokens", "must be at least min_tokens (\(minTokens)), got \(maxTokens)")
    }
    var settings = BudgetSettings(
      policy: policy ?? d.policy, memoryFraction: fraction, minTokens: minTokens,
      maxTokens: maxTokens,
      fullHeadCost: r.double("full_head_cost", range: 0...1) ?? d.fullHeadCost,
      stabilityThreshold: r.double("stability_threshold", range: 0...1) ?? d.stabilityThreshold,
      similarityThreshold: r.double("similarity_threshold", range: 0...1) ?? d.similarityThreshold,
      profileIntervalSteps: r.int("profile_interval_steps", range: 1...1 << 20)
        ?? d.profileIntervalSteps)
    settings.recall = r.bool("recall") ?? settings.recall
    return r.log.problems.count == start ? settings : nil
  }

  static func readSecurity(_ r: YAMLReader) -> SecuritySettings? {
    r.rejectUnknownKeys(["token_env", "token_file", "tls", "tenants"])
    let start = r.log.problems.count
    let tokenEnv = r.string("token_env")
    if let tokenEnv, tokenEnv.contains(where: { !($0.isLetter || $0.isNumber || $0 == "_") }) {
      r.problem("token_env", "must be an environment variable name, got \"\(tokenEnv)\"")
    }
    let tokenFile = r.string("token_file")
    var tls: TLSSettings?
    if let t = r.section("tls") {
      t.rejectUnknownKeys(["cert", "key", "ca", "require_client_cert", "server_name"])
      let cert = t.string("cert", required: true)
      let key = t.string("key", required: true)
      let ca = t.string("ca")
      let mutual = t.bool("require_client_cert") ?? false
      let serverName = t.string("server_name")
      if mutual && ca == nil {
        t.problem("ca", "require_client_cert needs the CA that signs client certificates")
      }
      if let cert, let key {
        tls = TLSSettings(
          certificate: cert, key: key, ca: ca, requireClientCertificates: mutual,
          serverName: serverName)
      }
    }
    var tenants: [TenantSettings] = []
    for t in r.list("tenants") {
      guard t.expectMapping() else { continue }
      t.rejectUnknownKeys(["name", "token_env", "token_file", "namespaces", "quota"])
      let name = t.string("name", required: true)
      let env = t.string("token_env")
      let file = t.string("token_file")
      if env == nil && file == nil {
        t.problem("token_env", "a tenant needs token_env or token_file")
      }
      var namespaces: [UInt32] = []
      for n in t.list("namespaces", required: true) {
        guard let value = n.node.scalar.flatMap({ UInt32($0.string) }) else {
          n.problem("", "a namespace is a number in 0...\(UInt32.max)")
          continue
        }
        namespaces.append(value)
      }
      let quota = t.bytes("quota")
      if let name {
        if name == "cluster" || tenants.contains(where: { $0.name == name }) {
          t.problem("name", "tenant \"\(name)\" is reserved or used twice")
        }
        tenants.append(
          TenantSettings(
            name: name, tokenEnvironmentVariable: env, tokenFile: file, namespaces: namespaces,
            quotaBytes: quota))
      }
    }
    if !tenants.isEmpty && tokenEnv == nil && tokenFile == nil {
      r.problem("tenants", "tenants need the cluster token too (token_env or token_file)")
    }
    let settings = SecuritySettings(
      tokenEnvironmentVariable: tokenEnv, tokenFile: tokenFile, tls: tls, tenants: tenants)
    return r.log.problems.count == start ? settings : nil
  }
}

extension Node {
  /// This node with the scalar at `path` set to `value`, creating mappings on the way.
  func setting(_ path: [String], to value: String) -> Node {
    guard let key = path.first else { return Node(value) }
    var mapping = self.mapping ?? Node.Mapping([])
    let child = mapping[key] ?? Node.Mapping([]).asNode
    mapping[key] = child.setting(Array(path.dropFirst()), to: value)
    return .mapping(mapping)
  }
}

extension Node.Mapping {
  fileprivate var asNode: Node { .mapping(self) }
}
