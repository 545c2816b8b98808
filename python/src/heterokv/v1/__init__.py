"""Generated protobuf and gRPC code of HeteroKV's wire API (scripts/generate-python-proto.sh)."""
