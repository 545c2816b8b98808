"""HeteroKV from Python: a client of the worker's engine API, an embedded cluster, and (in
:mod:`heterokv.transformers`) a Hugging Face transformers cache backed by HeteroKV."""

from heterokv.client import AttendResult, EngineClient, HeadStats, SequenceInfo, SequenceStats
from heterokv.cluster import LocalCluster, find_hkv
from heterokv.errors import HeteroKVError

__all__ = [
    "AttendResult",
    "EngineClient",
    "HeadStats",
    "HeteroKVError",
    "LocalCluster",
    "SequenceInfo",
    "SequenceStats",
    "find_hkv",
]
__version__ = "0.1.0"
