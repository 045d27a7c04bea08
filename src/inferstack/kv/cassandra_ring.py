"""Which Cassandra node holds which key, so a read of many keys can go out as one
multi-partition request per replica instead of one request per key.

`murmur3_tokens` computes Cassandra's Murmur3Partitioner token of many keys at once with
numpy (keys of one length together, 16-byte blocks across all keys per step). `TokenRing`
is the ring of the nodes a client may use as coordinators (the local data centre), built
from ``system.local`` and ``system.peers_v2``, and `TokenRing.groups` splits keys into groups
of at most `size` keys that share a replica, each with the address of that replica.

When every node the ring knows holds every key (one node, or as many nodes as the
replication factor, e.g. 3 nodes with RF 3), grouping needs no tokens: keys are cut into
groups as they come and go to whichever node the driver's load balancing picks.

The ring only has to be right for speed, never for correctness: a group sent to a node
that is not a replica of its keys is still answered (that node coordinates, one hop more).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MURMUR3_PARTITIONER = "org.apache.cassandra.dht.Murmur3Partitioner"

_C1 = np.uint64(0x87C37B91114253D5)
_C2 = np.uint64(0x4CF5AD432745937F)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_FIVE = np.uint64(5)
_ADD1 = np.uint64(0x52DCE729)
_ADD2 = np.uint64(0x38495AB5)
_U64 = npt.NDArray[np.uint64]

Address = tuple[str, int]  # host, native port


def _rotl(x: _U64, r: int) -> _U64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(k: _U64) -> _U64:
    k = k ^ (k >> np.uint64(33))
    k = k * _FMIX1
    k = k ^ (k >> np.uint64(33))
    k = k * _FMIX2
    return k ^ (k >> np.uint64(33))


def _mix_k1(k1: _U64) -> _U64:
    return _rotl(k1 * _C1, 31) * _C2


def _mix_k2(k2: _U64) -> _U64:
    return _rotl(k2 * _C2, 33) * _C1


def _murmur3_same_length(data: npt.NDArray[np.uint8], length: int) -> npt.NDArray[np.int64]:
    """Tokens of `data.shape[0]` keys of `length` bytes each (one row per key)."""
    count = data.shape[0]
    h1 = np.zeros(count, dtype=np.uint64)
    h2 = np.zeros(count, dtype=np.uint64)
    blocks = length // 16
    if blocks:
        words = np.ascontiguousarray(data[:, : blocks * 16]).view("<u8").astype(np.uint64)
        for block in range(blocks):
            h1 ^= _mix_k1(words[:, 2 * block])
            h1 = _rotl(h1, 27) + h2
            h1 = h1 * _FIVE + _ADD1
            h2 ^= _mix_k2(words[:, 2 * block + 1])
            h2 = _rotl(h2, 31) + h1
            h2 = h2 * _FIVE + _ADD2
    tail = length % 16
    if tail:
        # Cassandra reads tail bytes as signed Java bytes widened to long: a byte >= 0x80
        # sets every higher bit before the shift. Keep that quirk or tokens differ.
        signed = data[:, blocks * 16 :].view(np.int8).astype(np.int64).view(np.uint64)
        k1 = np.zeros(count, dtype=np.uint64)
        k2 = np.zeros(count, dtype=np.uint64)
        for index in range(tail):
            shifted = signed[:, index] << np.uint64(8 * (index % 8))
            if index < 8:
                k1 ^= shifted
            else:
                k2 ^= shifted
        if tail > 8:
            h2 ^= _mix_k2(k2)
        h1 ^= _mix_k1(k1)
    size = np.uint64(length)
    h1 ^= size
    h2 ^= size
    h1 = h1 + h2
    h2 = h2 + h1
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = h1 + h2
    tokens = h1.view(np.int64)
    # Murmur3Partitioner.normalize: the smallest long is not a valid token.
    tokens[tokens == np.iinfo(np.int64).min] = np.iinfo(np.int64).max
    return tokens


def murmur3_tokens(keys: Sequence[bytes]) -> npt.NDArray[np.int64]:
    """Cassandra's Murmur3Partitioner token of each key (a blob partition key)."""
    tokens = np.empty(len(keys), dtype=np.int64)
    if not keys:
        return tokens
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    with np.errstate(over="ignore"):
        for length in np.unique(lengths).tolist():
            positions = np.flatnonzero(lengths == length)
            joined = b"".join(keys[i] for i in positions.tolist())
            data = np.frombuffer(joined, dtype=np.uint8).reshape(len(positions), length)
            tokens[positions] = _murmur3_same_length(data, length)
    return tokens


@dataclass(frozen=True)
class Node:
    address: Address
    data_center: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class KeyGroup:
    """Positions (in the keys given to `TokenRing.groups`) of keys that share a replica;
    `replica` is None when any node will do."""

    replica: Address | None
    positions: list[int]


class TokenRing:
    """The coordinators a client uses and which of them holds each key (primary replica)."""

    def __init__(self, nodes: Iterable[Node], replicas_per_key: int, partitioner: str) -> None:
        self.nodes = sorted(nodes, key=lambda node: node.address)
        self.replicas_per_key = replicas_per_key
        # Murmur3 is the default of Cassandra and the only partitioner of ScyllaDB; for any
        # other, tokens are not computed here and groups go wherever the driver sends them.
        self.everywhere = (
            len(self.nodes) <= max(replicas_per_key, 1) or partitioner != MURMUR3_PARTITIONER
        )
        pairs = sorted((t, index) for index, node in enumerate(self.nodes) for t in node.tokens)
        self._tokens = np.array([token for token, _ in pairs], dtype=np.int64)
        self._owners = np.array([index for _, index in pairs], dtype=np.int64)
        if not len(self._tokens):
            self.everywhere = True

    def groups(self, keys: Sequence[bytes], size: int) -> list[KeyGroup]:
        """`keys` in groups of at most `size` that share a replica (order kept in a group)."""
        if self.everywhere:
            count = len(keys)
            return [
                KeyGroup(None, list(range(i, min(i + size, count)))) for i in range(0, count, size)
            ]
        if not keys:
            return []
        # A token belongs to the first node token at or after it, wrapping past the end.
        slots = np.searchsorted(self._tokens, murmur3_tokens(keys), side="left")
        owners = self._owners[slots % len(self._tokens)]
        groups: list[KeyGroup] = []
        order = np.argsort(owners, kind="stable")
        sorted_owners = owners[order]
        bounds = np.flatnonzero(np.diff(sorted_owners)) + 1
        for positions in np.split(order, bounds):
            replica = self.nodes[int(owners[positions[0]])].address
            mine = positions.tolist()
            groups += [KeyGroup(replica, mine[i : i + size]) for i in range(0, len(mine), size)]
        return groups


def local_nodes(nodes: Iterable[Node], data_center: str | None) -> list[Node]:
    """The nodes of the local data centre (all of them when it is not known)."""
    listed = list(nodes)
    if data_center is None:
        return listed
    return [node for node in listed if node.data_center == data_center]


def replication_factor(replication: dict[str, str], data_center: str | None) -> int:
    """Replicas per key in `data_center` from a keyspace's replication map (0 = unknown)."""
    strategy = replication.get("class", "").rsplit(".", 1)[-1]
    try:
        if strategy == "SimpleStrategy":
            return int(replication.get("replication_factor", "0"))
        if strategy == "NetworkTopologyStrategy" and data_center is not None:
            return int(replication.get(data_center, "0"))
    except ValueError:
        return 0
    return 0
