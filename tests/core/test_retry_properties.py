"""Properties of the back-off schedule (RetryPolicy), over any policy its constructor accepts."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.retry import RetryPolicy

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

# Fixed examples (derandomize) so a failure reproduces; no example database written into the work tree.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=200)

SECONDS = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    """Any policy the constructor accepts: base <= cap < inf, factor >= 1, 0 <= jitter < 1."""
    base, cap = sorted((draw(SECONDS), draw(SECONDS)))
    return RetryPolicy(
        max_attempts=draw(st.integers(min_value=1, max_value=30)),
        base_delay_s=base,
        max_delay_s=cap,
        factor=draw(st.one_of(st.floats(min_value=1, max_value=10), st.floats(min_value=1, max_value=1e300))),
        jitter=draw(st.floats(min_value=0, max_value=1, exclude_max=True)),
    )


ATTEMPTS = st.integers(min_value=1, max_value=10_000)


class FixedDraw(random.Random):
    """A random source whose every draw is ``value``: the ends of the jitter band, exactly."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


DRAWS = st.floats(min_value=0, max_value=1, exclude_max=True)


@PROPERTY
@given(policies())
def test_nominal_delays_start_at_the_base_and_never_decrease_up_to_the_cap(policy: RetryPolicy) -> None:
    attempts = [*range(1, 80), 100, 1_000, 10**6]
    delays = [policy.nominal_delay_s(attempt) for attempt in attempts]

    assert delays[0] == policy.base_delay_s
    assert all(earlier <= later for earlier, later in itertools.pairwise(delays)), delays
    assert all(0 <= delay <= policy.max_delay_s for delay in delays)
    for attempt, delay in zip(attempts, delays, strict=True):
        if policy.base_delay_s > 0 and _uncapped_log(policy, attempt) > math.log(policy.max_delay_s) + 1e-6:
            assert delay == policy.max_delay_s, attempt  # base * factor ** (attempt - 1) is past the cap


def _uncapped_log(policy: RetryPolicy, attempt: int) -> float:
    """log(base * factor ** (attempt - 1)), without the overflow of computing it directly."""
    return math.log(policy.base_delay_s) + (attempt - 1) * math.log(policy.factor)


@PROPERTY
@given(policies(), ATTEMPTS, DRAWS)
def test_jitter_only_shortens_the_nominal_delay_by_at_most_its_fraction(
    policy: RetryPolicy, attempt: int, draw: float
) -> None:
    nominal = policy.nominal_delay_s(attempt)

    delay = policy.delay_s(attempt, rng=FixedDraw(draw))

    assert nominal * (1 - policy.jitter) <= delay <= nominal <= policy.max_delay_s


@PROPERTY
@given(policies(), ATTEMPTS, st.integers(min_value=0, max_value=2**32))
def test_a_seeded_delay_is_finite_inside_the_band_and_reproducible(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    nominal = policy.nominal_delay_s(attempt)

    delay = policy.delay_s(attempt, rng=random.Random(seed))

    assert math.isfinite(delay)
    assert nominal * (1 - policy.jitter) <= delay <= nominal
    assert policy.delay_s(attempt, rng=random.Random(seed)) == delay


@PROPERTY
@given(policies(), ATTEMPTS, DRAWS, st.floats(min_value=0, allow_nan=False))
def test_retry_after_is_honoured_up_to_the_cap_and_never_past_it(
    policy: RetryPolicy, attempt: int, draw: float, retry_after_s: float
) -> None:
    jittered = policy.delay_s(attempt, rng=FixedDraw(draw))

    delay = policy.delay_s(attempt, retry_after_s=retry_after_s, rng=FixedDraw(draw))

    assert delay == max(jittered, min(retry_after_s, policy.max_delay_s))  # at least what was asked, capped
    assert delay <= policy.max_delay_s
    assert math.isfinite(delay)  # also for Retry-After: inf


@PROPERTY
@given(policies(), ATTEMPTS, DRAWS, st.one_of(st.just(math.nan), st.floats(max_value=0, exclude_max=True)))
def test_a_nonsense_retry_after_changes_nothing(
    policy: RetryPolicy, attempt: int, draw: float, retry_after_s: float
) -> None:
    jittered = policy.delay_s(attempt, rng=FixedDraw(draw))

    assert policy.delay_s(attempt, retry_after_s=retry_after_s, rng=FixedDraw(draw)) == jittered


@PROPERTY
@given(policies())
def test_the_whole_schedule_has_a_finite_span(policy: RetryPolicy) -> None:
    span_s = policy.span_s()

    waits_s = sum(policy.nominal_delay_s(n) for n in range(1, policy.max_attempts))
    assert math.isfinite(span_s)
    assert span_s == waits_s + policy.max_attempts * policy.timeout_s
    assert waits_s <= (policy.max_attempts - 1) * policy.max_delay_s * (1 + 1e-12)  # float sums round
