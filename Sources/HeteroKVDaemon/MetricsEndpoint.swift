import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves a Prometheus registry as text at `GET /metrics` over HTTP/1.1, as a lifecycle
/// `Service`, with the probes operators and orchestrators expect: `GET /healthz` (200 while
/// the process answers) and `GET /readyz` (200 when the daemon serves, 503 with the unmet
/// conditions otherwise). Any other path is a 404.
public final class MetricsEndpoint: Service, Sendable {
  private let registry: PrometheusCollectorRegistry
  private let health: DaemonHealth
  private let host: String
  private let port: Int
  private let logger: Logger
  private let bound = AsyncValue<Int>()

  /// An endpoint for `registry` and `health` on `host:port` (0 picks a free port). Without
  /// `health`, `/readyz` answers ready as soon as the endpoint listens.
  public init(
    registry: PrometheusCollectorRegistry, health: DaemonHealth = DaemonHealth(conditions: []),
    host: String, port: Int, logger: Logger
  ) {
    self.registry = registry
    self.health = health
    self.host = host
    self.port = port
    self.logger = logger
  }

  /// The port listened on, once bound.
  public func listeningPort() async throws -> Int { try await bound.value }

  public func run() async throws {
    let registry = self.registry
    let health = self.health
    let channel: any Channel
    do {
      channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
          channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
            try channel.pipeline.syncOperations.addHandler(
              MetricsHTTPHandler(registry: registry, health: health))
          }
        }
        .bind(host: host, port: port).get()
    } catch {
      bound.fail(error)
      throw error
    }
    let port = channel.localAddress?.port ?? 0
    bound.set(port)
    logger.info("metrics endpoint listening", metadata: ["address": "\(host):\(port)"])
    try await withGracefulShutdownHandler {
      try await channel.closeFuture.get()
    } onGracefulShutdown: {
      channel.close(promise: nil)
    }
  }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let registry: PrometheusCollectorRegistry
  private let health: DaemonHealth
  private var path: String?
  private var keepAlive = true

  init(registry: PrometheusCollectorRegistry, health: DaemonHealth) {
    self.registry = registry
    self.health = health
  }

  /// The status, content type and body for `path`.
  private func respond(to path: String?) -> (HTTPResponseStatus, String, [UInt8]) {
    let route = path.map { String($0[..<($0.firstIndex(of: "?") ?? $0.endIndex)]) }
    let plain = "text/plain; charset=utf-8"
    switch route {
    case "/metrics":
      return (.ok, "text/plain; version=0.0.4; charset=utf-8", registry.emitToBuffer())
    case "/healthz":
      return (.ok, plain, Array("ok\n".utf8))
    case "/readyz":
      let (ready, text) = health.readiness
      return (ready ? .ok : .serviceUnavailable, plain, Array(text.utf8))
    default:
      return (.notFound, plain, Array("not found: try /metrics, /healthz or /readyz\n".utf8))
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let head):
      path = head.method == .GET ? head.uri : nil
      keepAlive = head.isKeepAlive
    case .body:
      break
    case .end:
      let (status, contentType, body) = respond(to: path)
      var headers = HTTPHeaders()
      headers.add(name: "Content-Type", value: contentType)
      headers.add(name: "Content-Length", value: "\(body.count)")
      if !keepAlive { headers.add(name: "Connection", value: "close") }
      let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
      context.write(wrapOutboundOut(.head(head)), promise: nil)
      context.write(
        wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))),
        promise: nil)
      let close = !keepAlive
      let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
      context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
        if close { bound.value.close(promise: nil) }
      }
    }
  }
}
