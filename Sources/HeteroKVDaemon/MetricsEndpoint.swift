import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves a Prometheus registry as text at `GET /metrics` over HTTP/1.1, as a lifecycle
/// `Service`. Any other path is a 404.
public final class MetricsEndpoint: Service, Sendable {
  private let registry: PrometheusCollectorRegistry
  private let host: String
  private let port: Int
  private let logger: Logger
  private let bound = AsyncValue<Int>()

  /// An endpoint for `registry` on `host:port` (0 picks a free port).
  public init(registry: PrometheusCollectorRegistry, host: String, port: Int, logger: Logger) {
    self.registry = registry
    self.host = host
    self.port = port
    self.logger = logger
  }

  /// The port listened on, once bound.
  public func listeningPort() async throws -> Int { try await bound.value }

  public func run() async throws {
    let registry = self.registry
    let channel: any Channel
    do {
      channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
          channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
            try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
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
  private var path: String?
  private var keepAlive = true

  init(registry: PrometheusCollectorRegistry) { self.registry = registry }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let head):
      path = head.method == .GET ? head.uri : nil
      keepAlive = head.isKeepAlive
    case .body:
      break
    case .end:
      let found = path == "/metrics" || path?.hasPrefix("/metrics?") == true
      let body = found ? registry.emitToBuffer() : Array("not found: try /metrics\n".utf8)
      var headers = HTTPHeaders()
      headers.add(
        name: "Content-Type",
        value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
      headers.add(name: "Content-Length", value: "\(body.count)")
      if !keepAlive { headers.add(name: "Connection", value: "close") }
      let head = HTTPResponseHead(
        version: .http1_1, status: found ? .ok : .notFound, headers: headers)
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
