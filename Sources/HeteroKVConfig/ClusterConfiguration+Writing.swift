import HeteroKVCore
import HeteroKVWire
import Yams

// Writing the typed settings back as a cluster file, for tools that start clusters (the
// demo's child processes, tests): the same keys the reader reads, so what is written is what
// every member then loads.
extension ClusterConfiguration {
  /// The cluster file of these settings: YAML that ``parse(yaml:file:overrides:)`` reads back
  /// into an equal value.
  public func yaml() throws -> String {
    var root: [(String, Node?)] = [("cluster", scalar(name))]
    if let model {
      root.append(
        (
          "model",
          mapping([
            ("name", scalar(model.name)), ("layers", scalar(model.layers)),
            ("query_heads", scalar(model.queryHeads)), ("kv_heads", scalar(model.kvHeads)),
            ("head_dim", scalar(model.headDim)),
          ])
        ))
    }
    if let c = coordinator {
      root.append(
        (
          "coordinator",
          mapping([
            ("control", scalar(c.control)), ("metrics", c.metrics.map(scalar)),
            ("state_dir", c.stateDirectory.isEmpty ? nil : scalar(c.stateDirectory)),
            ("lease", scalar(c.leaseSeconds)), ("heartbeat", scalar(c.heartbeatSeconds)),
            ("snapshot_every", scalar(c.snapshotEvery)),
            ("store", c.store == .file ? nil : scalar(c.store.rawValue)),
            (
              "etcd",
              c.etcd.map { e in
                mapping([
                  ("endpoints", .sequence(Node.Sequence(e.endpoints.map(scalar)))),
                  ("prefix", scalar(e.prefix)), ("user", e.user.map(scalar)),
                  ("password_env", e.passwordEnv.map(scalar)),
                  ("password_file", e.passwordFile.map(scalar)),
                  (
                    "tls",
                    e.tls.map { t in
                      mapping([
                        ("ca", t.ca.map(scalar)), ("cert", t.certificate.map(scalar)),
                        ("key", t.key.map(scalar)), ("server_name", t.serverName.map(scalar)),
                      ])
                    }
                  ),
                ])
              }
            ),
            (
              "replicas",
              c.replicas.isEmpty
                ? nil
                : .sequence(
                  Node.Sequence(
                    c.replicas.map { r in
                      mapping([
                        ("id", scalar(r.id)), ("control", scalar(r.control)),
                        ("metrics", r.metrics.map(scalar)),
                      ])
                    }))
            ),
          ])
        ))
    }
    let w = worker
    root.append(
      (
        "worker",
        mapping([
          ("control", w.control.map(scalar)), ("metrics", w.metrics.map(scalar)),
          ("key_codec", scalar(w.keyCodec.rawValue)), ("key_bits", scalar(w.keyBits)),
          ("group_size", scalar(w.groupSize)), ("window", scalar(w.window)),
          ("sinks", scalar(w.sinks)), ("tau", w.tau.map(scalar)),
          ("cap_selection", scalar(w.capSelection)), ("output_mode", scalar(w.outputMode.rawValue)),
          ("ack_replicas", scalar(w.ackReplicas.rawValue)), ("finer_codes", scalar(w.finerCodes)),
          ("query_aware_codes", scalar(w.queryAwareCodes)),
          ("unkept_estimate", scalar(w.unkeptEstimate)),
          ("selection", scalar(w.selection.rawValue)),
        ])
      ))
    let b = budgets
    root.append(
      (
        "budgets",
        mapping([
          ("policy", scalar(b.policy.rawValue)), ("memory_fraction", scalar(b.memoryFraction)),
          ("min_tokens", scalar(b.minTokens)), ("max_tokens", b.maxTokens.map(scalar)),
          ("full_head_cost", scalar(b.fullHeadCost)),
          ("stability_threshold", scalar(b.stabilityThreshold)),
          ("similarity_threshold", scalar(b.similarityThreshold)),
          ("profile_interval_steps", scalar(b.profileIntervalSteps)),
          ("recall", scalar(b.recall)),
        ])
      ))
    root.append(("replication", scalar(replication)))
    let s = security
    root.append(
      (
        "security",
        mapping([
          ("token_env", s.tokenEnvironmentVariable.map(scalar)),
          ("token_file", s.tokenFile.map(scalar)),
          (
            "tls",
            s.tls.map { t in
              mapping([
                ("cert", scalar(t.certificate)), ("key", scalar(t.key)),
                ("ca", t.ca.map(scalar)),
                ("require_client_cert", scalar(t.requireClientCertificates)),
                ("server_name", t.serverName.map(scalar)),
              ])
            }
          ),
          (
            "tenants",
            s.tenants.isEmpty
              ? nil
              : .sequence(
                Node.Sequence(
                  s.tenants.map { t in
                    mapping([
                      ("name", scalar(t.name)),
                      ("token_env", t.tokenEnvironmentVariable.map(scalar)),
                      ("token_file", t.tokenFile.map(scalar)),
                      (
                        "namespaces", .sequence(Node.Sequence(t.namespaces.map { scalar(Int($0)) }))
                      ),
                      ("quota", t.quotaBytes.map(scalar)),
                    ])
                  }))
          ),
        ])
      ))
    root.append(
      (
        "memory_nodes",
        .sequence(
          Node.Sequence(
            memoryNodes.map { n in
              mapping([
                ("id", scalar(n.id)), ("data", scalar(n.data)), ("control", scalar(n.control)),
                ("metrics", n.metrics.map(scalar)), ("capacity", scalar(n.capacityBytes)),
                ("page_size", scalar(n.pageBytes)), ("transport", scalar(n.transport.rawValue)),
              ])
            }))
      ))
    return try Yams.serialize(node: mapping(root))
  }
}

/// A mapping of the entries that have a value, in order.
private func mapping(_ entries: [(String, Node?)]) -> Node {
  .mapping(Node.Mapping(entries.compactMap { key, value in value.map { (Node(key), $0) } }))
}

/// A scalar: strings quoted so that none reads back as a number or a boolean.
private func scalar(_ value: String) -> Node { Node(value, Tag(.str), .doubleQuoted) }
private func scalar(_ value: HostPort) -> Node { scalar(value.description) }
private func scalar(_ value: Int) -> Node { Node(String(value)) }
private func scalar(_ value: Double) -> Node { Node(String(value)) }
private func scalar(_ value: Bool) -> Node { Node(value ? "true" : "false") }
