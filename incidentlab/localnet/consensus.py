"""Tendermint-style consensus for one localnet validator, as a pure state machine.

The machine takes proposals, votes and timeouts and returns effects (broadcast a message,
schedule a timeout, commit a block); the validator process carries them out. Nothing here
touches a socket or a clock, so unit tests drive several machines deterministically.
Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence

from .network import Timeouts

__all__ = [
    "Step",
    "Validator",
    "Broadcast",
    "ScheduleTimeout",
    "Commit",
    "ConsensusState",
    "quorum_power",
    "proposer_index",
    "BLOCK_ID_FLAG_ABSENT",
    "BLOCK_ID_FLAG_COMMIT",
    "BLOCK_ID_FLAG_NIL",
]

# CometBFT's BlockIDFlag values in a commit signature.
BLOCK_ID_FLAG_ABSENT = 1
BLOCK_ID_FLAG_COMMIT = 2
BLOCK_ID_FLAG_NIL = 3

NIL = ""


class Step(enum.Enum):
    """The step of the current round, in CometBFT's order."""

    NEW_HEIGHT = "NewHeight"
    PROPOSE = "Propose"
    PREVOTE = "Prevote"
    PRECOMMIT = "Precommit"
    COMMIT = "Commit"


@dataclasses.dataclass(frozen=True)
class Validator:
    address: str
    power: int


@dataclasses.dataclass(frozen=True)
class Broadcast:
    """Send ``message`` to every peer."""

    message: dict


@dataclasses.dataclass(frozen=True)
class ScheduleTimeout:
    """Call ``on_timeout(kind, height, round)`` after ``delay`` seconds."""

    kind: str
    height: int
    round: int
    delay: float


@dataclasses.dataclass(frozen=True)
class Commit:
    """Store ``block`` as committed with its seen ``commit`` (the precommits collected)."""

    block: dict
    block_hash: str
    commit: dict


def quorum_power(total_power: int) -> int:
    """Return the voting power a block needs: more than two thirds, ``total * 2 // 3 + 1``."""
    return total_power * 2 // 3 + 1


def proposer_index(height: int, round_: int, count: int) -> int:
    """Return the index of the proposer of (height, round) among ``count`` validators.

    With equal voting power CometBFT's weighted round robin reduces to plain rotation, one
    step per height and one per round.
    """
    return (height - 1 + round_) % count


class _VoteSet:
    """Votes of one type for one (height, round), at most one per validator."""

    def __init__(self) -> None:
        self.votes: dict[str, dict] = {}
        self.power_by_hash: dict[str, int] = {}
        self.total = 0

    def add(self, vote: dict, power: int) -> bool:
        if vote["validator"] in self.votes:
            return False
        self.votes[vote["validator"]] = vote
        self.power_by_hash[vote["block_hash"]] = self.power_by_hash.get(vote["block_hash"], 0) + power
        self.total += power
        return True

    def majority(self, quorum: int) -> str | None:
        """Return the block hash (or NIL) with a quorum of power, else None."""
        for block_hash, power in self.power_by_hash.items():
            if power >= quorum:
                return block_hash
        return None


class ConsensusState:
    """Consensus of one validator: rounds, votes, locking and commits for successive heights.

    Takes the validator set in proposer order, this node's address (None for a non-validator),
    the timeouts (already scaled), the last committed height with its seen commit, and
    ``make_block(height, round, last_commit) -> (block, block_hash)`` which the proposer calls.
    Each ``on_*`` method returns a list of effects for the caller to carry out in order.
    """

    def __init__(
        self,
        *,
        validators: Sequence[Validator],
        me: str | None,
        timeouts: Timeouts,
        make_block: Callable[[int, int, dict], tuple[dict, str]],
        sign_vote: Callable[[dict], dict],
        last_height: int = 0,
        last_commit: dict | None = None,
    ) -> None:
        self.validators = list(validators)
        self.power = {v.address: v.power for v in self.validators}
        self.total_power = sum(self.power.values())
        self.quorum = quorum_power(self.total_power)
        self.me = me
        self.timeouts = timeouts
        self.make_block = make_block
        self.sign_vote = sign_vote
        self.height = last_height + 1
        self.round = 0
        self.step = Step.NEW_HEIGHT
        self.last_commit = last_commit or _empty_commit(last_height)
        self.rounds_this_height = 0
        self._reset_height()

    # -- public API --------------------------------------------------------------------

    def start(self) -> list:
        """Enter round 0 of the current height."""
        return self._enter_round(self.round)

    def proposer(self, height: int | None = None, round_: int | None = None) -> str:
        height = self.height if height is None else height
        round_ = self.round if round_ is None else round_
        return self.validators[proposer_index(height, round_, len(self.validators))].address

    def on_proposal(self, message: dict) -> list:
        """Handle a proposal message from a peer (or from this node)."""
        height, round_ = message["height"], message["round"]
        if height != self.height or message.get("proposer") != self.proposer(height, round_):
            return []
        self.blocks[message["block_hash"]] = message["block"]
        self.proposals.setdefault(round_, message)
        if self.step == Step.COMMIT:
            return []
        effects = self._maybe_round_skip(round_, message.get("proposer"))
        if round_ == self.round and self.step == Step.PROPOSE:
            effects += self._prevote(self._choose_prevote(message))
        effects += self._on_prevote_change(self.round)
        return effects + self._check_commit_any_round()

    def on_vote(self, vote: dict) -> list:
        """Handle a prevote or precommit of a validator (this node's own included)."""
        if vote["validator"] not in self.power:
            return []
        if vote["height"] == self.height - 1 and vote["type"] == "precommit":
            return self._add_late_precommit(vote)
        if vote["height"] != self.height:
            return []
        if self.step == Step.COMMIT:
            return self._add_late_precommit(vote) if vote["type"] == "precommit" else []
        table = self.prevotes if vote["type"] == "prevote" else self.precommits
        round_ = vote["round"]
        if not table.setdefault(round_, _VoteSet()).add(vote, self.power[vote["validator"]]):
            return []
        effects = self._maybe_round_skip(round_, vote["validator"])
        if vote["type"] == "prevote":
            effects += self._on_prevote_change(round_)
        else:
            effects += self._on_precommit_change(round_)
        return effects

    def on_timeout(self, kind: str, height: int, round_: int) -> list:
        """Handle an expired timeout scheduled earlier; stale ones are ignored."""
        if height != self.height:
            return []
        if kind == "commit":
            return self._new_height() if self.step == Step.COMMIT else []
        if round_ != self.round:
            return []
        if kind == "propose" and self.step == Step.PROPOSE:
            return self._prevote(NIL)
        if kind == "prevote" and self.step == Step.PREVOTE:
            return self._precommit(NIL)
        if kind == "precommit" and self.step in (Step.PREVOTE, Step.PRECOMMIT):
            return self._enter_round(self.round + 1)
        if kind == "round" and self.step != Step.COMMIT:
            return self._enter_round(self.round + 1)
        return []

    def own_votes(self) -> list[dict]:
        """Return this node's votes in the current round, for re-gossip after message loss."""
        votes = []
        for table in (self.prevotes, self.precommits):
            vote_set = table.get(self.round)
            if vote_set and self.me in vote_set.votes:
                votes.append(vote_set.votes[self.me])
        return votes

    def fast_forward(self, last_height: int, last_commit: dict) -> list:
        """Jump to ``last_height + 1`` after block sync stored the blocks this node missed."""
        if last_height < self.height:
            return []
        self.height = last_height
        self.last_commit = last_commit
        return self._new_height()

    # -- rounds and steps --------------------------------------------------------------

    def _reset_height(self) -> None:
        self.prevotes: dict[int, _VoteSet] = {}
        self.precommits: dict[int, _VoteSet] = {}
        self.proposals: dict[int, dict] = {}
        self.blocks: dict[str, dict] = {}
        self.locked_hash, self.locked_round = NIL, -1
        self.valid_hash, self.valid_round = NIL, -1
        self._scheduled: set[tuple[str, int]] = set()
        self.rounds_this_height = 0

    def _new_height(self) -> list:
        self.height += 1
        self.round = 0
        self._reset_height()
        self.step = Step.NEW_HEIGHT
        return self._enter_round(0)

    def _enter_round(self, round_: int) -> list:
        self.round = round_
        self.rounds_this_height = round_
        self.step = Step.PROPOSE
        effects: list = [ScheduleTimeout("propose", self.height, round_, self.timeouts.propose_for(round_))]
        # Without a quorum online no prevote or precommit wait ever starts. This fallback moves
        # such a node to the next round after all three waits, so a halted chain keeps climbing
        # through rounds with ever longer timeouts, which is what operators see as consensus_rounds.
        round_timeout = (self.timeouts.propose_for(round_) + self.timeouts.prevote_for(round_)
                         + self.timeouts.precommit_for(round_))
        effects += self._schedule_once("round", round_, round_timeout)
        if self.me is not None and self.proposer() == self.me:
            effects += self._propose()
        elif round_ in self.proposals:
            effects += self._prevote(self._choose_prevote(self.proposals[round_]))
        return effects + self._on_prevote_change(round_) + self._on_precommit_change(round_)

    def _propose(self) -> list:
        if self.valid_hash and self.valid_hash in self.blocks:
            block, block_hash, pol_round = self.blocks[self.valid_hash], self.valid_hash, self.valid_round
        else:
            block, block_hash = self.make_block(self.height, self.round, self.last_commit)
            pol_round = -1
        message = {
            "type": "proposal",
            "height": self.height,
            "round": self.round,
            "pol_round": pol_round,
            "block": block,
            "block_hash": block_hash,
            "proposer": self.me,
        }
        return [Broadcast(message)] + self.on_proposal(message)

    def _choose_prevote(self, proposal: dict) -> str:
        block_hash = proposal["block_hash"]
        if self.locked_round == -1 or self.locked_hash == block_hash:
            return block_hash
        # A proposal re-proposing a block that had a quorum of prevotes in a round at or after
        # our lock unlocks us (Tendermint's proof-of-lock rule).
        pol_round = proposal.get("pol_round", -1)
        pol = self.prevotes.get(pol_round)
        if pol_round >= self.locked_round and pol and pol.majority(self.quorum) == block_hash:
            return block_hash
        return NIL

    def _prevote(self, block_hash: str) -> list:
        self.step = Step.PREVOTE
        return self._vote("prevote", block_hash)

    def _precommit(self, block_hash: str) -> list:
        self.step = Step.PRECOMMIT
        return self._vote("precommit", block_hash)

    def _schedule_once(self, kind: str, round_: int, delay: float) -> list:
        if (kind, round_) in self._scheduled:
            return []
        self._scheduled.add((kind, round_))
        return [ScheduleTimeout(kind, self.height, round_, delay)]

    def _vote(self, vote_type: str, block_hash: str) -> list:
        if self.me is None:
            return []
        vote = self.sign_vote(
            {"type": vote_type, "height": self.height, "round": self.round, "block_hash": block_hash, "validator": self.me}
        )
        return [Broadcast(vote)] + self.on_vote(vote)

    def _on_prevote_change(self, round_: int) -> list:
        vote_set = self.prevotes.get(round_)
        if vote_set is None or round_ != self.round:
            return []
        majority = vote_set.majority(self.quorum)
        if majority and majority != NIL and majority in self.blocks:
            self.valid_hash, self.valid_round = majority, round_
        if self.step != Step.PREVOTE:
            return []
        if majority == NIL:
            return self._precommit(NIL)
        if majority and majority in self.blocks:
            self.locked_hash, self.locked_round = majority, round_
            return self._precommit(majority)
        if vote_set.total >= self.quorum:
            return self._schedule_once("prevote", round_, self.timeouts.prevote_for(round_))
        return []

    def _on_precommit_change(self, round_: int) -> list:
        vote_set = self.precommits.get(round_)
        if vote_set is None:
            return []
        majority = vote_set.majority(self.quorum)
        if majority and majority != NIL and majority in self.blocks:
            return self._commit(majority, round_)
        if round_ == self.round and vote_set.total >= self.quorum and self.step != Step.COMMIT:
            return self._schedule_once("precommit", round_, self.timeouts.precommit_for(round_))
        return []

    def _check_commit_any_round(self) -> list:
        for round_ in sorted(self.precommits):
            effects = self._on_precommit_change(round_)
            if self.step == Step.COMMIT:
                return effects
        return []

    def _commit(self, block_hash: str, round_: int) -> list:
        if self.step == Step.COMMIT:
            return []
        self.step = Step.COMMIT
        self.commit_round = round_
        self.committed_hash = block_hash
        commit = self._build_commit(block_hash, round_)
        self.last_commit = commit
        return [
            Commit(self.blocks[block_hash], block_hash, commit),
            ScheduleTimeout("commit", self.height, round_, self.timeouts.commit),
        ]

    def _build_commit(self, block_hash: str, round_: int) -> dict:
        votes = self.precommits[round_].votes
        signatures = []
        for validator in self.validators:
            vote = votes.get(validator.address)
            signatures.append(_commit_signature(validator.address, vote, block_hash))
        return {"height": self.height, "round": round_, "block_hash": block_hash, "signatures": signatures}

    def _add_late_precommit(self, vote: dict) -> list:
        """Fold a precommit for the block just committed into the seen commit (timeout_commit)."""
        commit = self.last_commit
        if vote["round"] != commit.get("round") or vote["block_hash"] != commit.get("block_hash"):
            return []
        for index, validator in enumerate(self.validators):
            entry = commit["signatures"][index] if index < len(commit["signatures"]) else None
            if validator.address == vote["validator"] and entry and entry["block_id_flag"] == BLOCK_ID_FLAG_ABSENT:
                commit["signatures"][index] = _commit_signature(vote["validator"], vote, commit["block_hash"])
        return []

    def _maybe_round_skip(self, round_: int, sender: str | None) -> list:
        """Jump to a later round that a peer has reached at this height.

        Tendermint waits for over a third of the power before it skips ahead. Here rounds also
        advance on timeouts without a quorum, so two live nodes of a halted chain could drift a
        round apart and never vote in the same round again. Following any peer keeps them
        together. Locking, not round numbers, keeps commits safe, so this costs no safety.
        """
        if round_ <= self.round or sender is None or self.step == Step.COMMIT:
            return []
        return self._enter_round(round_)


#: CometBFT's zero time, which an absent commit signature carries.
ZERO_TIME = "0001-01-01T00:00:00Z"


def _commit_signature(address: str, vote: dict | None, block_hash: str) -> dict:
    # CometBFT rejects an absent signature that names its validator: the entry is empty and
    # only its position in the validator set says whose it is.
    if vote is None:
        return {"block_id_flag": BLOCK_ID_FLAG_ABSENT, "validator_address": "", "timestamp": ZERO_TIME, "signature": None}
    flag = BLOCK_ID_FLAG_COMMIT if vote["block_hash"] == block_hash else BLOCK_ID_FLAG_NIL
    return {
        "block_id_flag": flag,
        "validator_address": address,
        "timestamp": vote.get("timestamp"),
        "signature": vote.get("signature"),
    }


def _empty_commit(height: int) -> dict:
    return {"height": height, "round": 0, "block_hash": NIL, "signatures": []}
