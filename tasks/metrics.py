"""Herald's job metrics in the domain's words: each job is one delivery, labelled by its channel."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from core.metrics import JobMetrics
from tasks.registry import TASK_FOR_CHANNEL

CHANNEL_OF_TASK = {task: channel.value for channel, task in TASK_FOR_CHANNEL.items()}
OTHER = "other"  # a task that is not a delivery; the label set stays bounded all the same


def channel_of(task: str) -> str:
    return CHANNEL_OF_TASK.get(task, OTHER)


def delivery_metrics(registry: CollectorRegistry) -> JobMetrics:
    """Attempt and outcome metrics labelled ``channel``, every channel exported from zero."""
    return JobMetrics(registry, label="channel", label_of=channel_of, known=CHANNEL_OF_TASK.values())
