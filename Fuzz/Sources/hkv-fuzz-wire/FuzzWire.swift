import HeteroKVWire

/// libFuzzer's entry point: every decoder over the input; a violation is a crash (a finding).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
  do {
    try DecoderExercise.run(Array(UnsafeBufferPointer(start: data, count: size)))
  } catch {
    fatalError("\(error)")
  }
  return 0
}
