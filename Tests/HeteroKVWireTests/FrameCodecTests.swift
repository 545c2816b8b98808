import HeteroKVCore
import CHeteroKVKernels
import HeteroKVWire
import NIOCore
import Testing

@Suite("Frame codec")
struct FrameCodecTests {
  let limits = DataPlaneLimits(maxPayloadBytes: 1 << 16)

  @Test("CRC-32C matches the standard check value, in both the SSE4.2 and table versions")
  func crcCheckValue() {
    let check = Array("123456789".utf8)
    #expect(CRC32C.checksum(check) == 0xE306_9283)
    var bytes = [UInt8](repeating: 0, count: 4099)
    var seed: UInt32 = 7
    for i in bytes.indices {
      seed = seed &* 1_664_525 &+ 1_013_904_223
      bytes[i] = UInt8(truncatingIfNeeded: seed >> 24)
    }
    let fast = CRC32C.checksum(bytes)
    let tableDriven = hkv_kernels_portable().pointee.crc32c
    let portable = bytes.withUnsafeBytes { tableDriven(0, $0.baseAddress!, $0.count) }
    let portableCheck = check.withUnsafeBytes { tableDriven(0, $0.baseAddress!, $0.count) }
    #expect(fast == portable)
    #expect(portableCheck == 0xE306_9283)
    // Continuing a checksum over two halves equals one pass.
    let split = bytes.withUnsafeBytes { raw in
      CRC32C.checksum(
        UnsafeRawBufferPointer(rebasing: raw[1000...]),
        continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[..<1000])))
    }
    #expect(split == fast)
  }

  @Test("a frame round-trips; a partial frame asks for more bytes and consumes nothing")
  func roundTrip() throws {
    let payload = ByteBuffer(bytes: Array(0..<200).map { UInt8($0) })
    let frame = Frame(opcode: Opcode.gather.rawValue, flags: [], requestID: 42, payload: payload)
    let wire = frame.serialized()
    #expect(wire.readableBytes == FrameHeader.size + 200)

    var partial = wire.getSlice(at: 0, length: 100)!
    #expect(try FrameCodec.readFrame(from: &partial, limits: limits) == nil)
    #expect(partial.readableBytes == 100)

    var whole = wire
    whole.writeImmutableBuffer(wire)  // two frames back to back
    for _ in 0..<2 {
      guard case .frame(let decoded) = try FrameCodec.readFrame(from: &whole, limits: limits)
      else {
        Issue.record("expected a frame")
        return
      }
      #expect(decoded.header == frame.header)
      #expect(decoded.payload == payload)
      #expect(decoded.opcode == .gather)
    }
    #expect(whole.readableBytes == 0)
  }

  @Test(
    "bad magic, unknown version and oversized lengths are fatal; the length is refused before the payload arrives"
  )
  func fatalRejections() {
    let frame = Frame(opcode: 3, flags: [], requestID: 9, payload: ByteBuffer(bytes: [1, 2, 3]))
    var badMagic = frame.serialized()
    badMagic.setInteger(UInt32(0xDEAD_BEEF), at: 0, endianness: .little)
    expectRejection(&badMagic, .malformedFrame, fatal: true, header: false)

    var badVersion = frame.serialized()
    badVersion.setInteger(UInt8(9), at: 4)
    expectRejection(&badVersion, .unsupportedVersion, fatal: true, header: true)

    // Only the header of a frame that claims 1 GiB: rejected at once.
    var huge = ByteBuffer()
    FrameHeader(opcode: 1, flags: [], requestID: 5, payloadLength: 1 << 30, checksum: 0)
      .write(to: &huge)
    expectRejection(&huge, .frameTooLarge, fatal: true, header: true)
  }

  @Test("a checksum mismatch is reported with the request id and does not desynchronise the stream")
  func checksumMismatch() throws {
    let frame = Frame(
      opcode: 3, flags: [], requestID: 77, payload: ByteBuffer(bytes: [1, 2, 3, 4]))
    var wire = frame.serialized()
    wire.setInteger(UInt8(99), at: FrameHeader.size + 2)
    wire.writeImmutableBuffer(frame.serialized())
    guard
      case .corrupt(let header, let error) = try FrameCodec.readFrame(from: &wire, limits: limits)
    else {
      Issue.record("expected a corrupt frame")
      return
    }
    #expect(header.requestID == 77)
    #expect(error.code == .checksumMismatch)
    guard case .frame(let next) = try FrameCodec.readFrame(from: &wire, limits: limits) else {
      Issue.record("the next frame should decode")
      return
    }
    #expect(next.header.requestID == 77)
  }

  @Test("error frames carry code and message")
  func errorFrames() {
    let error = HeteroKVError(.indexOutOfRange, "token 9 is outside 0..<4")
    let frame = Frame.error(error, opcode: 3, requestID: 1, allocator: ByteBufferAllocator())
    #expect(frame.header.flags == [.response, .error])
    #expect(frame.decodedError() == error)
    let ok = Frame(opcode: 3, flags: .response, requestID: 1, payload: ByteBuffer())
    #expect(ok.decodedError() == nil)
    // A truncated error payload is itself reported, not trusted.
    var bad = ByteBuffer()
    bad.writeInteger(UInt16(12), endianness: .little)
    bad.writeInteger(UInt16(500), endianness: .little)
    let truncated = Frame(opcode: 3, flags: [.response, .error], requestID: 1, payload: bad)
    #expect(truncated.decodedError()?.code == .malformedFrame)
  }

  private func expectRejection(
    _ buffer: inout ByteBuffer, _ code: HeteroKVError.Code, fatal: Bool, header: Bool
  ) {
    do {
      _ = try FrameCodec.readFrame(from: &buffer, limits: limits)
      Issue.record("expected \(code)")
    } catch {
      #expect(error.error.code == code)
      #expect(error.isFatal == fatal)
      #expect((error.header != nil) == header)
    }
  }
}
