// hkv-cluster-bench: the worker's decode step on a real cluster.
//
//   swift run -c release --package-path Benchmarks hkv-cluster-bench decode [--tokens 131072,1048576] \
//       [--steps 12] [--codec pq|pq4|scalar] [--group 8] [--exact] [--uncapped]
//       [--selection kv_group|query_head]
//   swift run -c release --package-path Benchmarks hkv-cluster-bench scale --hkv .build/release/hkv \
//       [--tokens 4194304] [--memnodes 4] [--steps 4]
//   swift run -c release --package-path Benchmarks hkv-cluster-bench repair [--tokens 393216] \
//       [--steps 12]
//
// `decode` runs one layer of Llama-3-8B geometry on an in-process cluster (coordinator, two
// memory nodes, worker) and compares each decode step with full attention computed on the same
// machine, with the split of the worker's time. `scale` starts a coordinator and memory nodes
// as `hkv` child processes, keeps the worker in this process, prefills a multi-million-token
// context, decodes, checks every step against full attention computed in chunks, and reports
// each process's memory. `repair` stops one of three memory nodes (replication 2) mid-decode
// and measures how long the worker takes to copy the shards it held to the survivors, and the
// step time before, during and after.
import Foundation
import HeteroKVConfig
import HeteroKVCore
import HeteroKVLocalCluster
import HeteroKVWire
import HeteroKVWorker
import Logging

let arguments = Array(CommandLine.arguments.dropFirst())
func option(_ name: String) -> String? {
  guard let i = arguments.firstIndex(of: "--\(name)"), i + 1 < arguments.count else { return nil }
  return arguments[i + 1]
}
let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
let oneLayer = try ModelGeometry(
  name: "llama-3-8b-1l", layers: 1, queryHeads: 32, kvHeads: 8, headDim: 128)

func say(_ line: String) {
  FileHandle.standardError.write(Data((line + "\n").utf8))
}

switch arguments.first {
case "decode":
  let sizes = (option("tokens") ?? "131072,1048576").split(separator: ",").compactMap { Int($0) }
  let steps = Int(option("steps") ?? "12") ?? 12
  print(
    "| tokens | worker share of fp16 K/V | HeteroKV step | compute | plan | fan-out | merge | full attention | speed-up | rel. error | kept tokens per query head |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for n in sizes {
    try await DecodeBench(
      tokens: n, steps: steps, codec: option("codec") ?? "pq",
      exact: arguments.contains("--exact"), uncapped: arguments.contains("--uncapped"),
      selection: SelectionScope(rawValue: option("selection") ?? "kv_group") ?? .kvGroup
    ).run()
  }
case "scale":
  guard let hkv = option("hkv") else {
    say("scale needs --hkv PATH (build it with: swift build -c release --product hkv)")
    exit(2)
  }
  try await ScaleBench(
    hkv: hkv, tokens: Int(option("tokens") ?? "4194304") ?? 4_194_304,
    memoryNodes: Int(option("memnodes") ?? "4") ?? 4, steps: Int(option("steps") ?? "4") ?? 4
  ).run()
case "repair":
  try await RepairBench(
    tokens: Int(option("tokens") ?? "393216") ?? 393_216,
    steps: Int(option("steps") ?? "12") ?? 12
  ).run()
default:
  say(
    "usage: hkv-cluster-bench decode [--tokens N,M] [--steps S] | scale --hkv PATH [--tokens N] [--memnodes K] [--steps S] | repair [--tokens N] [--steps S]"
  )
  exit(2)
}
