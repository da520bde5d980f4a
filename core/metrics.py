"""Prometheus metrics for jobs: an attempt observer, queue gauges per backend, a worker's own endpoint.

Everything goes into a ``CollectorRegistry`` the caller owns (one per app, one per worker process), never
prometheus_client's global one, so two apps in one process (tests) cannot collide. Labels stay bounded:
a job's label value is ``label_of(task name)`` (Herald maps tasks to channels), never an id or address.

=====================================  =========  =====================================================
herald_deliveries_total                counter    <label>, outcome = delivered | failed | skipped (final)
herald_delivery_retries_total          counter    <label>: attempts that failed and will run again
herald_delivery_deferrals_total        counter    <label>: runs that deferred (DeferJob): no attempt, no outcome
herald_delivery_duration_seconds       histogram  <label>: each attempt, whatever its verdict (not deferrals)
herald_jobs_in_flight                  gauge      attempts running in this process now
herald_queue_depth                     gauge      state = due (waiting for a worker) | scheduled (for a time)
herald_queue_oldest_age_seconds        gauge      how long the oldest due job has waited (0 when none)
=====================================  =========  =====================================================

The job metrics count what this process ran; the queue gauges describe the whole queue, so the web
process reports them (a worker process does not, or every worker would repeat the same number).
A delivery cancelled before it ran (DELETE /notifications/{id}) never had an attempt, so no outcome
counts it: the observers see attempts only. A deferral (a webhook host at WEBHOOK_MAX_PER_HOST, say) is
neither a retry nor an outcome, and takes no time worth a histogram: it counts in its own counter only, so
a busy receiver shows as deferrals rather than as retries or slow attempts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from arq.constants import default_queue_name
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.asyncio import Redis

from core.arq_enqueue import DEFERRED_KEY, FAR_FUTURE_MS
from core.arq_worker import RUNNING_KEY
from core.inline import InlineBackend
from core.jobs import PRIORITY_BAND_MS, Priority
from core.observe import AttemptReport

logger = logging.getLogger("herald.metrics")

# From a fast webhook to an SMTP server near its 30 s timeout.
DURATION_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES: Final = ("delivered", "failed", "skipped")
_OUTCOME_OF_PHASE: Final = {"succeeded": "delivered", "failed": "failed", "skipped": "skipped"}


class JobMetrics:
    """An observer (see core.observe) counting attempts and final outcomes, labelled by ``label_of(task)``.

    ``label`` names the label (Herald: ``channel``); ``known`` are its values, exported at zero from
    the start so that a rate() has a series before the first event. A cancelled attempt (shutdown)
    only leaves the in-flight gauge: in-process mode records it as cancelled, arq runs it again. A
    deferred run leaves it too, and counts only in ``herald_delivery_deferrals_total``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        label: str,
        label_of: Callable[[str], str],
        known: Iterable[str] = (),
    ) -> None:
        self._label_of = label_of
        self.finished = Counter(
            "herald_deliveries", "Jobs that reached a final outcome.", [label, "outcome"], registry=registry
        )
        self.retries = Counter(
            "herald_delivery_retries", "Attempts that failed and will run again.", [label], registry=registry
        )
        self.deferrals = Counter(
            "herald_delivery_deferrals",
            "Runs that deferred the job to later (not attempts, not outcomes).",
            [label],
            registry=registry,
        )
        self.duration = Histogram(
            "herald_delivery_duration_seconds",
            "How long each attempt took, whatever its verdict.",
            [label],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge("herald_jobs_in_flight", "Attempts running in this process now.", registry=registry)
        for value in known:
            for outcome in OUTCOMES:
                self.finished.labels(value, outcome)
            self.retries.labels(value)
            self.deferrals.labels(value)
            self.duration.labels(value)

    def __call__(self, event: AttemptReport) -> None:
        if event.phase == "started":
            self.in_flight.inc()
            return
        self.in_flight.dec()
        if event.phase == "cancelled":
            return
        value = self._label_of(event.task)
        if event.phase == "deferred":
            self.deferrals.labels(value).inc()
            return
        self.duration.labels(value).observe(event.duration_s)
        if event.phase == "retry":
            self.retries.labels(value).inc()
        else:
            self.finished.labels(value, _OUTCOME_OF_PHASE[event.phase]).inc()


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    due: int  # may run now, waiting for a free worker (running jobs are not counted)
    scheduled: int  # waiting for their time: a later send, or a retry's back-off
    oldest_due_age_s: float  # how long the oldest due job has waited; 0 when none is due


QueueProbe = Callable[[], Awaitable[QueueSnapshot]]


class QueueMetrics:
    """``herald_queue_depth{state}`` and ``herald_queue_oldest_age_seconds``, read by ``refresh``.

    A collector's collect() cannot await, so the /metrics handler awaits ``refresh()`` and collect()
    reports what it read. When the probe fails (Redis down) both gauges are left out of the scrape
    rather than repeating stale numbers: alert on ``absent(herald_queue_depth)``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._probe: QueueProbe | None = None
        self._snapshot: QueueSnapshot | None = None
        registry.register(self)

    def watch(self, probe: QueueProbe) -> None:
        self._probe = probe
        self._snapshot = None

    async def refresh(self) -> None:
        if self._probe is None:
            return
        try:
            self._snapshot = await self._probe()
        except Exception as exc:  # a scrape must still report the rest
            logger.warning("could not read the queue for metrics: %s", type(exc).__name__)
            self._snapshot = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        if self._snapshot is not None:
            yield from self._families(self._snapshot)

    @staticmethod
    def _families(snapshot: QueueSnapshot | None) -> Iterator[Metric]:
        depth = GaugeMetricFamily("herald_queue_depth", "Jobs waiting in the queue, by state.", labels=["state"])
        age = GaugeMetricFamily("herald_queue_oldest_age_seconds", "How long the oldest due job has waited.")
        if snapshot is not None:
            depth.add_metric(["due"], snapshot.due)
            depth.add_metric(["scheduled"], snapshot.scheduled)
            age.add_metric([], snapshot.oldest_due_age_s)
        yield depth
        yield age


def inline_queue_probe(backend: InlineBackend) -> QueueProbe:
    """The in-process runner's queue: jobs waiting for a free worker, and those waiting on a timer."""

    async def probe() -> QueueSnapshot:
        due, scheduled, oldest_s = backend.backlog()
        return QueueSnapshot(due=due, scheduled=scheduled, oldest_due_age_s=oldest_s)

    return probe


# arq keeps a job in its queue (scored with the ms it is due, moved back by its priority band; see
# core/arq_enqueue.py) while a worker runs it, and run_job lists running jobs in herald:running; those
# are left out of "due". Jobs due later wait in herald:deferred. Read in one script, so one state.
# KEYS: arq's queue, herald:running, herald:deferred. ARGV: now ms, band ms, far-future ms, #bands.
# Returns due, scheduled, and the oldest due job's wait in ms (as a string) or nil.
_QUEUE_SNAPSHOT: Final = """
local now, band, far, n_bands = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZCOUNT', KEYS[1], '-inf', now)
local scheduled = redis.call('ZCARD', KEYS[3]) + redis.call('ZCOUNT', KEYS[1], '(' .. now, now + far)
local running, running_due = {}, 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    running[id] = true
    running_due = running_due + 1
  end
end
local oldest = false
for k = 0, n_bands - 1 do
  local low, high = now - k * band - band / 2, math.min(now, now - k * band + band / 2)
  local head = redis.call('ZRANGEBYSCORE', KEYS[1], low, high, 'WITHSCORES', 'LIMIT', 0, running_due + 1)
  for i = 1, #head, 2 do
    if not running[head[i]] then
      local wait = now - (tonumber(head[i + 1]) + k * band)
      if not oldest or wait > oldest then oldest = wait end
      break
    end
  end
end
return {due - running_due, scheduled, oldest and tostring(oldest)}
"""


def arq_queue_probe(redis: Redis, *, queue_name: str = default_queue_name) -> QueueProbe:
    """arq's queue in Redis: due entries not being run, later ones, and how long the oldest due one has waited."""
    script = redis.register_script(_QUEUE_SNAPSHOT)

    async def probe() -> QueueSnapshot:
        now_ms = int(time.time() * 1000)
        due, scheduled, oldest_ms = await script(
            keys=[queue_name, RUNNING_KEY, DEFERRED_KEY],
            args=[now_ms, PRIORITY_BAND_MS, FAR_FUTURE_MS // 2, len(Priority)],
        )
        oldest_s = float(oldest_ms) / 1000 if oldest_ms is not None else 0.0
        return QueueSnapshot(due=max(int(due), 0), scheduled=int(scheduled), oldest_due_age_s=max(oldest_s, 0.0))

    return probe


class MetricsServer:
    """Serves a registry over HTTP from a thread, for a worker process, which has no web server of its own."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._tried = False
        self._server: WSGIServer | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen on ``host:port``, once per process (a worker restarted after a Redis outage keeps it).

        A port already taken, say by a second worker on the same machine, is logged, not raised: that
        worker runs on without metrics.
        """
        if self._tried:
            return
        self._tried = True
        try:
            self._server, _ = start_http_server(self._port, addr=self._host, registry=self._registry)
        except OSError as exc:
            logger.warning(
                "worker metrics are off: cannot listen on %s:%d (%s); set WORKER_METRICS_PORT to a free port",
                self._host,
                self._port,
                exc.strerror or type(exc).__name__,
            )
            return
        logger.info("worker metrics on http://%s:%d/metrics", self._host, self._port)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            with contextlib.suppress(OSError):
                server.server_close()
