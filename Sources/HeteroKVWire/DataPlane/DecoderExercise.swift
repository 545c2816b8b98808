import HeteroKVCore
import NIOCore

/// Runs every data-plane decoder over arbitrary bytes and checks what they accept: the
/// libFuzzer harness (`scripts/fuzz-wire.sh`) and the suite's replay of its corpus both call
/// this, so a crash or an asymmetry the fuzzer finds is a failing test from then on.
public enum DecoderExercise {
  /// What went wrong with an input a decoder accepted.
  public struct Violation: Error, CustomStringConvertible {
    public var description: String
  }

  /// Feeds `bytes` to the frame reader, then (its first byte choosing the message type) to one
  /// message decoder as a payload. Rejections are fine; a message that decodes must encode to
  /// bytes that decode again and encode to the same bytes (bit for bit, so NaN payloads
  /// compare too), or this throws a ``Violation``.
  public static func run(_ bytes: [UInt8], limits: DataPlaneLimits = .standard) throws(Violation) {
    var frames = ByteBuffer(bytes: bytes)
    while (try? FrameCodec.readFrame(from: &frames, limits: limits)) != nil {}
    guard let selector = bytes.first else { return }
    let payload = ByteBuffer(bytes: bytes.dropFirst())
    switch selector % 16 {
    case 0: try roundTrip(PutRequest.self, payload, limits)
    case 1: try roundTrip(PutResponse.self, payload, limits)
    case 2: try roundTrip(DropRequest.self, payload, limits)
    case 3: try roundTrip(DropResponse.self, payload, limits)
    case 4: try roundTrip(GatherRequest.self, payload, limits)
    case 5: try roundTrip(GatherResponse.self, payload, limits)
    case 6: try roundTrip(PartialAttentionRequest.self, payload, limits)
    case 7: try roundTrip(PartialAttentionResponse.self, payload, limits)
    case 8: try roundTrip(StatsResponse.self, payload, limits)
    case 9: try roundTrip(ChallengeResponse.self, payload, limits)
    case 10: try roundTrip(AuthenticateRequest.self, payload, limits)
    case 11: try roundTrip(StatsRequest.self, payload, limits)
    case 12: try roundTrip(PingRequest.self, payload, limits)
    case 13: try roundTrip(ChallengeRequest.self, payload, limits)
    case 14: try roundTrip(AuthenticateResponse.self, payload, limits)
    default:
      var frame = ByteBuffer(bytes: bytes.dropFirst())
      _ = try? FrameCodec.readFrame(from: &frame, limits: limits)
    }
  }

  private static func roundTrip<M: DataPlaneMessage>(
    _ type: M.Type, _ payload: ByteBuffer, _ limits: DataPlaneLimits
  ) throws(Violation) {
    guard let message = try? M(payload: payload, limits: limits) else { return }
    let again: M
    do {
      again = try M(payload: message.encoded(), limits: limits)
    } catch {
      throw Violation(description: "\(M.self) decoded, but its own encoding does not: \(error)")
    }
    guard again.encoded() == message.encoded() else {
      throw Violation(description: "\(M.self) changed through encode and decode")
    }
  }
}
