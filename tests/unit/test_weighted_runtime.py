"""WeightedRuntime: how calls split across endpoints, its validation and its lifecycle."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.inferflow.runtimes.weighted import WeightedRuntime


class FakeRuntime:
    """Answers with its own name so a test can tell which endpoint served a call."""

    def __init__(self, name: str, fail_close: bool = False) -> None:
        self.name = name
        self.calls = 0
        self.closed = False
        self.fail_close = fail_close

    @property
    def description(self) -> str:
        return f"fake {self.name}"

    def for_request(self) -> FakeRuntime:
        return self

    async def infer(self, matrix: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]:
        self.calls += 1
        return {self.name: np.zeros(matrix.shape[0])}

    async def close(self) -> None:
        self.closed = True
        if self.fail_close:
            raise UnavailableError(f"{self.description}: close failed")


MATRIX = np.zeros((3, 4))


def test_split_follows_the_weights() -> None:
    a, b, c = FakeRuntime("a"), FakeRuntime("b"), FakeRuntime("c")
    weighted = WeightedRuntime([(a, 6), (b, 3), (c, 1)], rng=random.Random(7))
    draws = 20_000
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(draws):
        counts[weighted.choose().description.removeprefix("fake ")] += 1
    # Seeded, so this is one fixed sample; the bound is > 4 standard deviations of a fair
    # binomial at these sizes, so any seed would pass, and a biased split would not.
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(counts[name] / draws - share) < 0.015, counts


async def test_each_call_goes_to_exactly_one_endpoint() -> None:
    a, b = FakeRuntime("a"), FakeRuntime("b")
    weighted = WeightedRuntime([(a, 1), (b, 1)], rng=random.Random(1))
    for _ in range(200):
        result = await weighted.infer(MATRIX)
        assert list(result) in (["a"], ["b"])
        assert result[next(iter(result))].shape == (3,)
    assert a.calls + b.calls == 200
    assert a.calls > 0 and b.calls > 0


def test_same_seed_same_choices() -> None:
    endpoints = [(FakeRuntime("a"), 1.0), (FakeRuntime("b"), 2.0)]
    first = WeightedRuntime(endpoints, rng=random.Random(42))
    second = WeightedRuntime(endpoints, rng=random.Random(42))
    assert [first.choose() for _ in range(100)] == [second.choose() for _ in range(100)]


def test_zero_weight_endpoint_gets_nothing() -> None:
    drained, live = FakeRuntime("drained"), FakeRuntime("live")
    for endpoints in ([(drained, 0), (live, 1)], [(live, 1), (drained, 0)]):
        weighted = WeightedRuntime(endpoints, rng=random.Random(3))
        assert {weighted.choose() for _ in range(2000)} == {live}


def test_draw_rounded_up_to_the_total_still_picks_a_weighted_endpoint() -> None:
    class TopOfRange(random.Random):
        def random(self) -> float:
            return 1.0  # beyond what random() returns; stands for a product rounded up

    live, drained = FakeRuntime("live"), FakeRuntime("drained")
    weighted = WeightedRuntime([(live, 0.1), (drained, 0)], rng=TopOfRange())
    assert weighted.choose() is live


def test_description_lists_endpoints_and_weights() -> None:
    weighted = WeightedRuntime([(FakeRuntime("a"), 3), (FakeRuntime("b"), 1)])
    assert weighted.description == ("weighted [fake a weight 3 (75.0%), fake b weight 1 (25.0%)]")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([], "at least one endpoint"),
        ([0.0, 0.0], "at least one weight above 0"),
        ([1.0, -1.0], "weight of fake 1 must be a finite number >= 0, got -1.0"),
        ([float("nan")], "weight of fake 0 must be a finite number >= 0, got nan"),
        ([float("inf"), 1.0], "weight of fake 0 must be a finite number >= 0, got inf"),
    ],
)
def test_bad_weights_are_refused(weights: list[float], message: str) -> None:
    endpoints = [(FakeRuntime(str(i)), w) for i, w in enumerate(weights)]
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        WeightedRuntime(endpoints)


async def test_close_closes_every_endpoint_even_when_one_fails() -> None:
    a, b, c = FakeRuntime("a"), FakeRuntime("b", fail_close=True), FakeRuntime("c")
    weighted = WeightedRuntime([(a, 1), (b, 1), (c, 1)])
    with pytest.raises(UnavailableError, match="fake b: close failed"):
        await weighted.close()
    assert a.closed and b.closed and c.closed
