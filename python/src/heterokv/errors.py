"""The one exception type of the package: a refusal or failure of HeteroKV."""

from __future__ import annotations

import grpc

__all__ = ["HeteroKVError"]


class HeteroKVError(Exception):
    """A call HeteroKV refused or could not complete.

    ``code`` is HeteroKV's error code as the engine API carries it (the gRPC status name in
    lower case: ``invalid_argument``, ``not_found``, ``failed_precondition``,
    ``resource_exhausted``, ``unavailable``, ``deadline_exceeded``, ...), ``message`` what the
    worker (or this client) said, ``address`` the worker that was called.
    """

    def __init__(self, code: str, message: str, address: str | None = None) -> None:
        self.code = code
        self.message = message
        self.address = address
        where = f" (worker {address})" if address else ""
        super().__init__(f"{code}: {message}{where}")

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, address: str, call: str) -> "HeteroKVError":
        """The exception for a failed gRPC call ``call`` to the worker at ``address``."""
        status = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else None
        code = status.name.lower() if status is not None else "unknown"
        if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"{call}: the worker at {address} did not answer ({details or code})"
        else:
            message = f"{call}: {details or code}"
        return cls(code, message, address)
