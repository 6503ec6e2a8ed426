"""Cosmos SDK REST bodies of the tendermint service (``/cosmos/base/tendermint/v1beta1/...``) built from CometBFT RPC results.

Pure functions, no I/O; the gateway calls them with what its upstream validator returned.
Standard library only.
"""

from __future__ import annotations

import base64

__all__ = ["REST_PREFIX", "syncing_response", "node_info_response", "latest_block_response", "error_response"]

REST_PREFIX = "/cosmos/base/tendermint/v1beta1"
#: Names of CometBFT's BlockIDFlag enum, which protobuf JSON writes as strings (the RPC writes numbers).
BLOCK_ID_FLAGS = {0: "BLOCK_ID_FLAG_UNKNOWN", 1: "BLOCK_ID_FLAG_ABSENT", 2: "BLOCK_ID_FLAG_COMMIT", 3: "BLOCK_ID_FLAG_NIL"}
#: Header fields that are bytes: upper-case hex in the RPC, base64 in protobuf JSON.
HEADER_BYTES_FIELDS = (
    "last_commit_hash", "data_hash", "validators_hash", "next_validators_hash", "consensus_hash",
    "app_hash", "last_results_hash", "evidence_hash", "proposer_address",
)
#: gRPC status codes that the REST gateway of the Cosmos SDK puts in its error bodies.
GRPC_NOT_FOUND = 5
GRPC_INTERNAL = 13


def syncing_response(status: dict) -> dict:
    """Return the body of GET .../syncing from the result of RPC /status: ``{"syncing": catching_up}``."""
    return {"syncing": bool(status["sync_info"]["catching_up"])}


def node_info_response(status: dict, abci_info: dict) -> dict:
    """Return the body of GET .../node_info from the results of RPC /status and /abci_info.

    ``default_node_info`` is the node_info of /status with the names and encodings of protobuf
    JSON: ``default_node_id`` for ``id`` and base64 ``channels``. ``application_version`` takes
    the app name and version from /abci_info.
    """
    info = status["node_info"]
    app = abci_info["response"]
    default_node_info = {
        "protocol_version": dict(info["protocol_version"]),
        "default_node_id": info["id"],
        "listen_addr": info["listen_addr"],
        "network": info["network"],
        "version": info["version"],
        "channels": _hex_to_base64(info["channels"]),
        "moniker": info["moniker"],
        "other": dict(info["other"]),
    }
    # NOTE: the localnet has no Go build, so the build fields stay empty rather than made up.
    application_version = {
        "name": app["data"],
        "app_name": f"{app['data']}d",
        "version": app["version"],
        "git_commit": "",
        "build_tags": "",
        "go_version": "",
        "build_deps": [],
        "cosmos_sdk_version": "",
    }
    return {"default_node_info": default_node_info, "application_version": application_version}


def latest_block_response(block_result: dict) -> dict:
    """Return the body of GET .../blocks/latest from the result of RPC /block (latest height).

    The block keeps the RPC's fields, but bytes are base64 instead of hex, ``parts`` is
    ``part_set_header`` and ``block_id_flag`` is the enum's name, as protobuf JSON writes them.
    NOTE: ``sdk_block`` (Cosmos SDK 0.47 and later) is left out, because its proposer address
    needs the chain's bech32 prefix, which the localnet does not define.
    """
    block = block_result["block"]
    header = dict(block["header"])
    header["last_block_id"] = _block_id(header["last_block_id"])
    for field in HEADER_BYTES_FIELDS:
        header[field] = _hex_to_base64(header[field])
    commit = block["last_commit"]
    last_commit = {
        "height": commit["height"],
        "round": commit["round"],
        "block_id": _block_id(commit["block_id"]),
        "signatures": [_commit_sig(signature) for signature in commit["signatures"]],
    }
    rest_block = {
        "header": header,
        "data": {"txs": list(block["data"]["txs"])},
        "evidence": {"evidence": list(block["evidence"]["evidence"])},
        "last_commit": last_commit,
    }
    return {"block_id": _block_id(block_result["block_id"]), "block": rest_block}


def error_response(grpc_code: int, message: str) -> dict:
    """Return an error body of the Cosmos SDK's REST gateway: ``{"code", "message", "details"}``."""
    return {"code": grpc_code, "message": message, "details": []}


def _block_id(rpc_block_id: dict) -> dict:
    parts = rpc_block_id["parts"]
    return {
        "hash": _hex_to_base64(rpc_block_id["hash"]),
        "part_set_header": {"total": parts["total"], "hash": _hex_to_base64(parts["hash"])},
    }


def _commit_sig(signature: dict) -> dict:
    # An absent validator has an empty address and no signature; protobuf JSON writes both as null.
    return {
        "block_id_flag": BLOCK_ID_FLAGS.get(signature["block_id_flag"], BLOCK_ID_FLAGS[0]),
        "validator_address": _hex_to_base64(signature["validator_address"]) or None,
        "timestamp": signature["timestamp"],
        "signature": signature["signature"] or None,
    }


def _hex_to_base64(value: str | None) -> str:
    if not value:
        return ""
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")
