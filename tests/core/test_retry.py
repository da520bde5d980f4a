from __future__ import annotations

import random
from typing import Any

import pytest

from core.retry import RetryPolicy


def test_nominal_delay_doubles_then_caps_at_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=10.0, factor=2.0)

    assert [policy.nominal_delay_s(attempt) for attempt in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_nominal_delay_stays_capped_for_huge_attempt_numbers() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=300.0, factor=10.0)

    assert policy.nominal_delay_s(10_000) == 300.0


@pytest.mark.parametrize("jitter", [0.2, 0.5])
def test_jittered_delay_stays_within_its_band_and_uses_all_of_it(jitter: float) -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=50.0, jitter=jitter)
    rng = random.Random(1234)

    for attempt in range(1, 9):
        nominal = policy.nominal_delay_s(attempt)
        low = nominal * (1 - jitter)
        draws = [policy.delay_s(attempt, rng=rng) for _ in range(2000)]
        assert all(low <= delay <= nominal for delay in draws), (attempt, min(draws), max(draws))
        # The band is really used: not all at one end (a policy ignoring jitter would fail here).
        spread = nominal - low
        assert min(draws) < low + 0.05 * spread
        assert max(draws) > nominal - 0.05 * spread


def test_no_jitter_gives_exactly_the_nominal_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0, jitter=0.0)
    rng = random.Random(7)

    assert [policy.delay_s(attempt, rng=rng) for attempt in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_retry_after_raises_the_delay() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.2)

    assert policy.delay_s(1, retry_after_s=30.0, rng=random.Random(1)) == 30.0


def test_retry_after_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.2)

    assert policy.delay_s(1, retry_after_s=86_400.0, rng=random.Random(1)) == 60.0


def test_retry_after_shorter_than_the_back_off_does_not_shorten_it() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.2)

    with_header = policy.delay_s(4, retry_after_s=0.5, rng=random.Random(99))
    without_header = policy.delay_s(4, rng=random.Random(99))

    assert with_header == without_header
    assert 6.4 <= with_header <= 8.0


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "expected"),
    [(3, 1, True), (3, 2, True), (3, 3, False), (3, 4, False), (1, 1, False)],
)
def test_should_retry_until_the_last_attempt(max_attempts: int, attempt: int, expected: bool) -> None:
    assert RetryPolicy(max_attempts=max_attempts).should_retry(attempt) is expected


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"timeout_s": 0.0},
        {"timeout_s": -1.0},
        {"base_delay_s": -0.1},
        {"base_delay_s": 10.0, "max_delay_s": 5.0},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"timeout_s": float("nan")},
        {"base_delay_s": float("nan")},
        {"max_delay_s": float("inf")},
        {"factor": float("nan")},
    ],
)
def test_invalid_policy_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        RetryPolicy(**bad)


def test_edge_values_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=1, base_delay_s=0.0, max_delay_s=0.0, factor=1.0, jitter=0.0)

    assert policy.delay_s(1) == 0.0
