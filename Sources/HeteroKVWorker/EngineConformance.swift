import HeteroKVEngineClient

/// The worker as a library is an engine like the gRPC client: a driver runs against either.
extension Worker: KVCacheEngine {}
