"""Consensus rules on in-process state machines with a simulated clock and network."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json

import pytest

from incidentlab.localnet import consensus as cs
from incidentlab.localnet.network import Timeouts

TIMEOUTS = Timeouts()


class SimNet:
    """Four (or N) consensus machines wired by an instant network, driven by a virtual clock."""

    def __init__(self, count: int = 4, down: tuple[int, ...] = ()):
        self.addresses = [f"VAL{i}" for i in range(count)]
        self.validators = [cs.Validator(a, 10) for a in self.addresses]
        self.down = set(down)
        self.now = 0.0
        self.queue: list = []
        self.seq = itertools.count()
        self.commits: dict[int, list[tuple[float, int, str, int]]] = {i: [] for i in range(count)}
        self.machines = [self._machine(i) for i in range(count)]

    def _machine(self, index: int) -> cs.ConsensusState:
        def make_block(height, round_, last_commit):
            header = {"height": height, "round": round_, "proposer": self.addresses[index]}
            return {"header": header, "last_commit": last_commit}, hashlib.sha256(
                json.dumps(header, sort_keys=True).encode()).hexdigest()

        def sign_vote(vote):
            return {**vote, "timestamp": self.now, "signature": f"sig-{index}"}

        return cs.ConsensusState(validators=self.validators, me=self.addresses[index], timeouts=TIMEOUTS,
                                 make_block=make_block, sign_vote=sign_vote)

    def start(self) -> None:
        for index, machine in enumerate(self.machines):
            if index not in self.down:
                self._apply(index, machine.start())

    def _apply(self, index: int, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, cs.Broadcast):
                for peer in range(len(self.machines)):
                    if peer != index:
                        self._push(self.now + 0.01, peer, ("message", effect.message))
            elif isinstance(effect, cs.ScheduleTimeout):
                self._push(self.now + effect.delay, index, ("timeout", effect))
            elif isinstance(effect, cs.Commit):
                self.commits[index].append((self.now, effect.commit["height"], effect.block_hash, effect.commit["round"]))

    def _push(self, due: float, index: int, event) -> None:
        heapq.heappush(self.queue, (due, next(self.seq), index, event))

    def run_until(self, end: float) -> None:
        while self.queue and self.queue[0][0] <= end:
            self.now, _, index, (kind, payload) = heapq.heappop(self.queue)
            if index in self.down:
                continue
            machine = self.machines[index]
            if kind == "timeout":
                effects = machine.on_timeout(payload.kind, payload.height, payload.round)
            elif payload["type"] == "proposal":
                effects = machine.on_proposal(payload)
            else:
                effects = machine.on_vote(payload)
            self._apply(index, effects)
        self.now = end

    def heights(self) -> list[int]:
        return [len(self.commits[i]) for i in range(len(self.machines))]


def test_quorum_is_two_thirds_plus_one():
    assert cs.quorum_power(40) == 27
    assert cs.quorum_power(30) == 21
    assert cs.quorum_power(10) == 7
    assert cs.quorum_power(3) == 3


def test_proposer_rotates_by_height_and_round():
    assert [cs.proposer_index(h, 0, 4) for h in range(1, 6)] == [0, 1, 2, 3, 0]
    assert [cs.proposer_index(5, r, 4) for r in range(4)] == [0, 1, 2, 3]


def test_timeouts_grow_per_round():
    assert TIMEOUTS.propose_for(0) == 3.0
    assert TIMEOUTS.propose_for(2) == 4.0
    assert TIMEOUTS.prevote_for(1) == 1.5
    assert TIMEOUTS.scaled(0.1).commit == pytest.approx(0.1)


def test_all_up_commits_every_commit_timeout():
    net = SimNet()
    net.start()
    net.run_until(10.5)
    heights = net.heights()
    assert min(heights) >= 9, heights
    # Every node committed the same block at each height (no fork).
    for height in range(min(heights)):
        assert len({net.commits[i][height][2] for i in range(4)}) == 1
    # Round 0 every time: nobody is missing.
    assert {c[3] for c in net.commits[0]} == {0}


def test_dead_proposer_costs_timeout_propose():
    net = SimNet(down=(1,))
    net.start()
    net.run_until(30.0)
    commits = net.commits[0]
    # Height 2 is proposed by validator 1 in round 0: it needs round 1, after timeout_propose.
    late = [c for c in commits if c[1] == 2][0]
    previous = [c for c in commits if c[1] == 1][0]
    assert late[3] == 1
    assert late[0] - previous[0] >= TIMEOUTS.commit + TIMEOUTS.propose
    assert {c[3] for c in commits if c[1] % 4 != 2} == {0}


def test_two_of_four_down_halts_and_rounds_climb():
    net = SimNet(down=(2, 3))
    net.start()
    net.run_until(60.0)
    assert net.heights()[:2] == [0, 0]
    rounds = [m.round for m in net.machines[:2]]
    assert min(rounds) >= 5, rounds
    assert abs(rounds[0] - rounds[1]) <= 1


def test_three_validators_halt_with_one_down():
    net = SimNet(count=3, down=(0,))
    net.start()
    net.run_until(30.0)
    assert net.heights()[1:] == [0, 0]


def test_restarted_validator_lets_halted_chain_resume():
    net = SimNet(down=(2, 3))
    net.start()
    net.run_until(20.0)
    net.down.discard(2)
    net._apply(2, net.machines[2].start())
    net.run_until(40.0)
    assert min(net.heights()[:3]) >= 3


def test_commit_marks_absent_validator_flag_one():
    net = SimNet(down=(3,))
    net.start()
    net.run_until(12.0)
    _, height, _, _ = net.commits[0][-1]
    commit = net.machines[0].last_commit
    absent, signed = commit["signatures"][3], commit["signatures"][0]
    assert absent["block_id_flag"] == cs.BLOCK_ID_FLAG_ABSENT
    # CometBFT's absent signature is empty: no address, the zero time, no signature.
    assert (absent["validator_address"], absent["timestamp"], absent["signature"]) == ("", "0001-01-01T00:00:00Z", None)
    assert signed["block_id_flag"] == cs.BLOCK_ID_FLAG_COMMIT
    assert signed["validator_address"] == "VAL0"


def test_stale_timeouts_are_ignored():
    net = SimNet()
    machine = net.machines[0]
    machine.start()
    assert machine.on_timeout("propose", 99, 0) == []
    assert machine.on_timeout("prevote", 1, 7) == []
