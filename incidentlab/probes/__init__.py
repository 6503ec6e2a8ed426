"""Probes of the running lab: the CometBFT RPC client and the block-height sampler."""

from .rpc import (
    ABSENT,
    COMMIT,
    NIL,
    Block,
    CometBFTClient,
    CommitSig,
    NetInfo,
    NodeStatus,
    Peer,
    parse_time,
    probe_status,
)
from .sampler import FRAME_COLUMNS, HeightSampler, sample_heights

__all__ = [
    "ABSENT",
    "COMMIT",
    "NIL",
    "Block",
    "CometBFTClient",
    "CommitSig",
    "NetInfo",
    "NodeStatus",
    "Peer",
    "parse_time",
    "probe_status",
    "FRAME_COLUMNS",
    "HeightSampler",
    "sample_heights",
]
