"""TokenRing: keys grouped by the node that holds them, in bounded groups (pure logic).

That the tokens are Cassandra's own is checked against a real Cassandra in
tests/contract/test_storage_contract.py (`token(k)`).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from inferstack.kv.cassandra_ring import (
    MURMUR3_PARTITIONER,
    Node,
    TokenRing,
    local_nodes,
    murmur3_tokens,
    replication_factor,
)

MIN, MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def ring_of(count: int, tokens_per_node: int, replicas: int = 1, seed: int = 1) -> TokenRing:
    rng = random.Random(seed)
    nodes = [
        Node(
            (f"10.0.0.{n}", 9042),
            "dc1",
            tuple(rng.randint(MIN + 1, MAX) for _ in range(tokens_per_node)),
        )
        for n in range(count)
    ]
    return TokenRing(nodes, replicas, MURMUR3_PARTITIONER)


def owner(ring: TokenRing, token: int) -> tuple[str, int]:
    """The node holding a token, the slow obvious way: first node token >= it, wrapping."""
    pairs = sorted((t, node.address) for node in ring.nodes for t in node.tokens)
    return next((address for t, address in pairs if t >= token), pairs[0][1])


def keys(count: int, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice((8, 13, 16, 21, 40))) for _ in range(count)]


@pytest.mark.parametrize("tokens_per_node", [1, 16])
def test_groups_hold_keys_of_one_node_each_in_bounded_groups(tokens_per_node: int) -> None:
    ring = ring_of(5, tokens_per_node)
    assert not ring.everywhere
    wanted = keys(1000)
    tokens = murmur3_tokens(wanted)
    groups = ring.groups(wanted, 30)
    seen = sorted(p for group in groups for p in group.positions)
    assert seen == list(range(len(wanted)))  # every key exactly once
    for group in groups:
        assert 1 <= len(group.positions) <= 30
        assert group.positions == sorted(group.positions)  # request order kept in a group
        assert {owner(ring, int(tokens[p])) for p in group.positions} == {group.replica}
    assert len({group.replica for group in groups}) == 5


def test_keys_past_the_last_token_wrap_to_the_first_node() -> None:
    ring = TokenRing(
        [Node(("a", 1), "dc1", (-(2**62),)), Node(("b", 1), "dc1", (2**62,))],
        1,
        MURMUR3_PARTITIONER,
    )
    wanted = keys(400)
    tokens = murmur3_tokens(wanted)
    for group in ring.groups(wanted, 1000):
        for position in group.positions:
            token = int(tokens[position])
            expected = ("b", 1) if -(2**62) < token <= 2**62 else ("a", 1)
            assert group.replica == expected


def test_every_node_a_replica_needs_no_tokens() -> None:
    ring = ring_of(3, 16, replicas=3)
    assert ring.everywhere
    groups = ring.groups(keys(120), 50)
    assert [g.replica for g in groups] == [None, None, None]
    assert [g.positions for g in groups] == [
        list(range(0, 50)),
        list(range(50, 100)),
        list(range(100, 120)),
    ]


def test_one_node_and_unknown_partitioners_group_without_tokens() -> None:
    assert TokenRing([Node(("a", 1), "dc1", (0,))], 0, MURMUR3_PARTITIONER).everywhere
    other = "org.apache.cassandra.dht.RandomPartitioner"
    assert TokenRing([Node((f"n{i}", 1), "dc1", (i,)) for i in range(4)], 1, other).everywhere
    assert TokenRing([], 1, MURMUR3_PARTITIONER).groups([b"a", b"b"], 1)[1].positions == [1]


def test_empty_reads_make_no_groups() -> None:
    assert ring_of(4, 4).groups([], 10) == []
    assert len(murmur3_tokens([])) == 0


def test_local_nodes_and_replication_factor() -> None:
    nodes = [Node(("a", 1), "dc1", (1,)), Node(("b", 1), "dc2", (2,))]
    assert [n.address for n in local_nodes(nodes, "dc2")] == [("b", 1)]
    assert local_nodes(nodes, None) == nodes
    simple = {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"}
    assert replication_factor(simple, "dc1") == 3
    topology = {"class": "NetworkTopologyStrategy", "dc1": "2", "dc2": "3"}
    assert replication_factor(topology, "dc2") == 3
    assert replication_factor(topology, "dc9") == 0
    assert replication_factor({"class": "SimpleStrategy", "replication_factor": "x"}, None) == 0


def test_tokens_do_not_depend_on_the_batch_they_come_in() -> None:
    wanted = keys(300, seed=5)
    together = murmur3_tokens(wanted)
    alone = np.array([murmur3_tokens([key])[0] for key in wanted])
    assert np.array_equal(together, alone)
