"""The runtime of one validator process: block sync, the consensus loop, peers and metrics.

It drives the consensus state machine with real time and carries its effects out over HTTP
to the peer validators on 127.0.0.1. Standard library only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path

from . import consensus as cs
from .metrics import Gauge, Histogram, Registry
from .network import Network, ValidatorSpec, sign
from .peers import Peer
from .routes import RouteCache
from .store import BlockStore

__all__ = ["ValidatorNode", "rfc3339", "block_id"]

logger = logging.getLogger(__name__)

BLOCK_INTERVAL_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
#: CometBFT's block sync checks whether it has caught up once a second.
BLOCKSYNC_SWITCH_INTERVAL = 1.0
#: Shortest block-sync check interval after time scaling, so that `catching_up: true` lasts long
#: enough for a probe to see it even at a small time scale.
MIN_BLOCKSYNC_SWITCH_INTERVAL = 0.5
#: Messages of the next height kept until this node reaches it (the oldest are dropped first).
MAX_FUTURE_MESSAGES = 64
APP_NAME = "virtengine"
APP_VERSION = "v0.9.0-localnet"
COMETBFT_VERSION = "0.38.12"


def rfc3339(timestamp: float) -> str:
    """Format a Unix time as RFC 3339 UTC with nanoseconds, as CometBFT does."""
    moment = _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc)
    nanos = int(round((timestamp % 1) * 1e9)) % 1_000_000_000
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def block_id(block_hash: str) -> dict:
    """Return the CometBFT BlockID of a block hash (one part set)."""
    if not block_hash:
        return {"hash": "", "parts": {"total": 0, "hash": ""}}
    parts_hash = hashlib.sha256(bytes.fromhex(block_hash)).hexdigest().upper()
    return {"hash": block_hash, "parts": {"total": 1, "hash": parts_hash}}


def _hash_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest().upper()


class ValidatorNode:
    """One validator: its store, its consensus, its peers and its metrics."""

    def __init__(self, network: Network, spec: ValidatorSpec):
        self.network = network
        self.spec = spec
        self.timeouts = network.timeouts.scaled(network.time_scale)
        self.store = BlockStore(Path(spec.home) / "data" / "blockstore.db")
        self.secrets = {v.address: v.secret for v in network.validators}
        routes = RouteCache(Path(network.path).parent)
        self.peers = {v.name: Peer(v, time_scale=network.time_scale, routes=routes)
                      for v in network.validators if v.name != spec.name}
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.catching_up = True
        self.consensus: cs.ConsensusState | None = None
        self._timers: list = []
        self._timer_seq = itertools.count()
        self._last_block_time: float | None = None
        self._future: list[dict] = []
        self._replayed_height = 0
        self._build_metrics()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Block-sync from the peers, then run consensus until ``stop()``."""
        for peer in self.peers.values():
            peer.start()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        self._blocksync()
        if self.stopping.is_set():
            return
        self._start_consensus()
        self._consensus_loop()

    def stop(self) -> None:
        self.stopping.set()
        self.events.put(("stop", None))
        for peer in self.peers.values():
            peer.stop()

    # -- views used by the RPC server ----------------------------------------------------

    def latest(self) -> tuple[dict, str, dict] | None:
        return self.store.load(self.store.height())

    def height_and_round(self) -> tuple[int, int]:
        if self.consensus is None:
            return self.store.height() + 1, 0
        return self.consensus.height, self.consensus.round

    def connected_peers(self) -> list[Peer]:
        return [peer for peer in self.peers.values() if peer.connected()]

    # -- block sync --------------------------------------------------------------------

    def _blocksync(self) -> None:
        """Fetch the blocks that peers have and this node lacks, then switch to consensus."""
        interval = max(BLOCKSYNC_SWITCH_INTERVAL * self.network.time_scale, MIN_BLOCKSYNC_SWITCH_INTERVAL)
        self.m_syncing.set(1)
        logger.info("starting block sync node=%s height=%d", self.spec.name, self.store.height())
        started = time.monotonic()
        deadline = started + max(2.0, 4 * interval)
        while not self.stopping.is_set():
            statuses = {name: peer.fetch_status() for name, peer in self.peers.items()}
            answered = {name: s for name, s in statuses.items() if s is not None}
            best = max((s["latest_height"] for s in answered.values()), default=0)
            if best > self.store.height():
                source = max(answered, key=lambda name: answered[name]["latest_height"])
                self._fetch_blocks(self.peers[source], best)
            own = self.store.height()
            # CometBFT switches to consensus once it is within one block of the best peer.
            caught_up = own >= best - 1
            # Like CometBFT's block sync, decide on a ticker: never before one full interval.
            ticked = time.monotonic() - started >= interval
            if caught_up and ticked and (answered or time.monotonic() > deadline or not self.peers):
                break
            self.stopping.wait(interval)
        self.catching_up = False
        self.m_syncing.set(0)
        logger.info("switched from block sync to consensus node=%s height=%d", self.spec.name, self.store.height())

    def _fetch_blocks(self, peer: Peer, up_to: int) -> int:
        """Store blocks from ``peer`` up to ``up_to``; return the new store height."""
        height = self.store.height()
        while height < up_to and not self.stopping.is_set():
            fetched = peer.fetch_block(height + 1)
            if fetched is None or not self._commit_is_valid(fetched["commit"], fetched["block_hash"]):
                logger.warning("block sync from %s stopped at height=%d: no valid block", peer.spec.name, height + 1)
                break
            self._save_block(fetched["block"], fetched["block_hash"], fetched["commit"])
            height += 1
        return height

    def _commit_is_valid(self, commit: dict, block_hash: str) -> bool:
        power = {v.address: v.power for v in self.network.validators}
        signed = 0
        for entry in commit.get("signatures", []):
            if entry["block_id_flag"] != cs.BLOCK_ID_FLAG_COMMIT:
                continue
            vote = {"type": "precommit", "height": commit["height"], "round": commit["round"],
                    "block_hash": block_hash, "validator": entry["validator_address"], "timestamp": entry["timestamp"]}
            if entry.get("signature") == self._vote_signature(vote):
                signed += power.get(entry["validator_address"], 0)
        return commit.get("block_hash") == block_hash and signed >= cs.quorum_power(self.network.total_power)

    # -- consensus ---------------------------------------------------------------------

    def _start_consensus(self) -> None:
        last_height = self.store.height()
        stored = self.store.load(last_height)
        validators = [cs.Validator(v.address, v.power) for v in self.network.validators]
        self.consensus = cs.ConsensusState(
            validators=validators,
            me=self.spec.address,
            timeouts=self.timeouts,
            make_block=self._make_block,
            sign_vote=self._sign_vote,
            last_height=last_height,
            last_commit=stored[2] if stored else None,
        )
        self._apply(self.consensus.start())

    def _consensus_loop(self) -> None:
        while not self.stopping.is_set():
            wait = self._timers[0][0] - time.monotonic() if self._timers else 0.5
            try:
                kind, payload = self.events.get(timeout=max(0.0, wait))
            except queue.Empty:
                kind, payload = None, None
            if kind == "message":
                self._on_message(payload)
            self._fire_due_timers()
            if self._future and self.consensus.height != self._replayed_height:
                self._replayed_height = self.consensus.height
                self._replay_future()

    def _fire_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timeout = heapq.heappop(self._timers)
            logger.debug("timeout %s height=%d round=%d", timeout.kind, timeout.height, timeout.round)
            self._apply(self.consensus.on_timeout(timeout.kind, timeout.height, timeout.round))
            # Votes can be lost while a peer is frozen or restarting; re-send ours on every timeout.
            for vote in self.consensus.own_votes():
                self._broadcast(vote)

    def _on_message(self, message: dict) -> None:
        kind = message.get("type")
        height = message.get("height", 0)
        sender = message.get("from", "")
        if kind == "status":
            height = message.get("latest_height", 0) + 1
        elif height == self.consensus.height + 1:
            # A peer already at the next height (it may have skipped timeout_commit after a
            # catch-up): keep its proposal and votes for when this node gets there.
            self._future.append(message)
            del self._future[:-MAX_FUTURE_MESSAGES]
            return
        if height > self.consensus.height and sender in self.peers:
            self._catch_up(self.peers[sender], height - 1)
        self._deliver(message)

    def _deliver(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "proposal":
            self._apply(self.consensus.on_proposal(message))
        elif kind in ("prevote", "precommit") and self._vote_is_valid(message):
            self._apply(self.consensus.on_vote(message))

    def _replay_future(self) -> None:
        """Deliver the buffered messages of the height this node has just reached."""
        height = self.consensus.height
        ready = [m for m in self._future if m.get("height") == height]
        self._future = [m for m in self._future if m.get("height", 0) > height]
        for message in ready:
            self._deliver(message)

    def _catch_up(self, peer: Peer, target_height: int) -> None:
        """Fetch committed blocks this node missed while in consensus (no catching_up flag).

        As in CometBFT, a node that lags after its switch to consensus keeps reporting
        ``catching_up: false``.
        """
        before = self.store.height()
        after = self._fetch_blocks(peer, target_height)
        if after > before:
            logger.info("caught up from %s: height %d -> %d node=%s", peer.spec.name, before, after, self.spec.name)
            _, _, commit = self.store.load(after)
            self._apply(self.consensus.fast_forward(after, commit))

    def _apply(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, cs.Broadcast):
                self._broadcast(effect.message)
            elif isinstance(effect, cs.ScheduleTimeout):
                heapq.heappush(self._timers, (time.monotonic() + effect.delay, next(self._timer_seq), effect))
            elif isinstance(effect, cs.Commit):
                self._save_block(effect.block, effect.block_hash, effect.commit)
        if self.consensus is not None:
            self.m_rounds.set(self.consensus.round)
            self.m_height.set(self.consensus.height)

    def _broadcast(self, message: dict) -> None:
        message = {**message, "from": self.spec.name}
        for peer in self.peers.values():
            peer.send(message)

    # -- blocks and votes --------------------------------------------------------------

    def _make_block(self, height: int, round_: int, last_commit: dict) -> tuple[dict, str]:
        previous = self.store.load(height - 1)
        last_hash = previous[1] if previous else ""
        prev_app_hash = previous[0]["header"]["app_hash"] if previous else ""
        validators_hash = _hash_json([[v.address, v.power] for v in self.network.validators])
        rpc_last_commit = {
            "height": str(last_commit["height"]),
            "round": last_commit["round"],
            "block_id": block_id(last_commit["block_hash"]),
            "signatures": last_commit["signatures"],
        }
        header = {
            "version": {"block": "11", "app": "1"},
            "chain_id": self.network.chain_id,
            "height": str(height),
            "time": rfc3339(time.time()),
            "last_block_id": block_id(last_hash),
            "last_commit_hash": _hash_json(rpc_last_commit),
            "data_hash": _hash_json([]),
            "validators_hash": validators_hash,
            "next_validators_hash": validators_hash,
            "consensus_hash": _hash_json(self.network.to_json()["timeouts"]),
            "app_hash": hashlib.sha256(f"{prev_app_hash}:{height}".encode()).hexdigest().upper(),
            "last_results_hash": _hash_json([]),
            "evidence_hash": _hash_json([]),
            "proposer_address": self.spec.address,
        }
        block = {"header": header, "data": {"txs": []}, "evidence": {"evidence": []}, "last_commit": rpc_last_commit}
        return block, _hash_json(header)

    def _vote_signature(self, vote: dict) -> str | None:
        secret = self.secrets.get(vote["validator"])
        if secret is None:
            return None
        fields = [self.network.chain_id, vote["type"], vote["height"], vote["round"], vote["block_hash"], vote["timestamp"]]
        return sign(secret, json.dumps(fields).encode())

    def _sign_vote(self, vote: dict) -> dict:
        vote = {**vote, "timestamp": rfc3339(time.time())}
        vote["signature"] = self._vote_signature(vote)
        return vote

    def _vote_is_valid(self, vote: dict) -> bool:
        try:
            return vote["signature"] == self._vote_signature(vote)
        except (KeyError, TypeError):
            return False

    def _save_block(self, block: dict, block_hash: str, commit: dict) -> None:
        height = int(block["header"]["height"])
        self.store.save(height, block_hash, block, commit)
        header_time = _parse_time(block["header"]["time"])
        if self._last_block_time is not None and header_time > self._last_block_time:
            self.m_block_interval.observe(header_time - self._last_block_time)
        self._last_block_time = header_time
        self._update_block_metrics(block)
        logger.info(
            "committed block height=%d hash=%s round=%d proposer=%s node=%s",
            height, block_hash[:12], commit["round"], block["header"]["proposer_address"][:12], self.spec.name,
        )

    # -- metrics -----------------------------------------------------------------------

    def _build_metrics(self) -> None:
        labels = {"chain_id": self.network.chain_id}
        registry = self.registry = Registry()

        def gauge(name: str, doc: str) -> Gauge:
            return registry.register(Gauge(f"cometbft_{name}", doc, labels))

        self.m_height = gauge("consensus_height", "Height of the chain.")
        self.m_validators = gauge("consensus_validators", "Number of validators.")
        self.m_validators_power = gauge("consensus_validators_power", "Total voting power of all validators.")
        self.m_missing = gauge("consensus_missing_validators", "Number of validators who did not sign the last block.")
        self.m_missing_power = gauge("consensus_missing_validators_power", "Total voting power of the missing validators.")
        self.m_rounds = gauge("consensus_rounds", "Number of rounds at the current height.")
        self.m_block_interval = registry.register(Histogram(
            "cometbft_consensus_block_interval_seconds", "Time between this and the last block.",
            BLOCK_INTERVAL_BUCKETS, labels))
        self.m_num_txs = gauge("consensus_num_txs", "Number of transactions in the last block.")
        self.m_total_txs = gauge("consensus_total_txs", "Total number of transactions.")
        self.m_latest_height = gauge("consensus_latest_block_height", "The latest block height.")
        self.m_last_signed = gauge("consensus_validator_last_signed_height", "Last height signed by this validator.")
        self.m_missed = gauge("consensus_validator_missed_blocks", "Total missed blocks for this validator.")
        self.m_syncing = gauge("blocksync_syncing", "Whether or not a node is block syncing. 1 if yes, 0 if no.")
        self.m_peers = gauge("p2p_peers", "Number of peers.")
        self.m_syncing.set(1)  # every node starts in block sync, as catching_up says
        self.m_validators.set(len(self.network.validators))
        self.m_validators_power.set(self.network.total_power)
        self._missed_blocks = 0
        self.m_missed.set(0, validator_address=self.spec.address)
        self.m_last_signed.set(0, validator_address=self.spec.address)
        self._refresh_store_metrics()

    def _refresh_store_metrics(self) -> None:
        stored = self.latest()
        if stored:
            self._update_block_metrics(stored[0])

    def _update_block_metrics(self, block: dict) -> None:
        height = int(block["header"]["height"])
        signatures = block["last_commit"]["signatures"]
        # Signatures are in validator-set order; an absent one carries no address.
        absent = [v for v, s in zip(self.network.validators, signatures) if s["block_id_flag"] == cs.BLOCK_ID_FLAG_ABSENT]
        self.m_latest_height.set(height)
        self.m_height.set(height + 1 if self.consensus is None else self.consensus.height)
        self.m_num_txs.set(len(block["data"]["txs"]))
        self.m_missing.set(len(absent))
        self.m_missing_power.set(sum(v.power for v in absent))
        for validator, entry in zip(self.network.validators, signatures):
            if validator.address != self.spec.address:
                continue
            if entry["block_id_flag"] == cs.BLOCK_ID_FLAG_ABSENT:
                self._missed_blocks += 1
                self.m_missed.set(self._missed_blocks, validator_address=self.spec.address)
            else:
                self.m_last_signed.set(height - 1, validator_address=self.spec.address)

    def render_metrics(self) -> str:
        self.m_peers.set(len(self.connected_peers()))
        return self.registry.render()

    # -- heartbeats --------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Tell peers our height a few times per block so that laggards notice and catch up."""
        interval = max(0.05, self.timeouts.commit / 2)
        network_file = Path(self.network.path)
        while not self.stopping.wait(interval):
            if self.network.path and not network_file.exists():
                # The lab home was deleted (a wiped temporary folder): nothing can manage this
                # process any more, so it must not run on as an orphan.
                logger.error("network file %s is gone; shutting down node=%s", network_file, self.spec.name)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            height, round_ = self.height_and_round()
            status = {"type": "status", "from": self.spec.name, "height": height, "round": round_,
                      "latest_height": self.store.height()}
            for peer in self.peers.values():
                peer.send(status)


def _parse_time(text: str) -> float:
    seconds, _, fraction = text.rstrip("Z").partition(".")
    moment = _dt.datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or '0'}")


def pub_key_json(spec: ValidatorSpec) -> dict:
    """Return the validator's public key as CometBFT's RPC shows it."""
    return {"type": "tendermint/PubKeyEd25519", "value": spec.pub_key}


def app_hash_base64(block: dict) -> str:
    return base64.b64encode(bytes.fromhex(block["header"]["app_hash"])).decode()
