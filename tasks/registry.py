"""Every task Herald's workers run, with its retry policy, in one visible place (and the app's own TaskSets)."""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Settings
from core.registry import TaskFunction, TaskRegistry
from core.retry import RetryPolicy
from core.taskset import TaskSet
from tasks.delivery import send_email, send_inapp, send_sms, send_webhook
from tasks.messages import Channel

DELIVERY_TASKS: dict[Channel, TaskFunction] = {
    Channel.EMAIL: send_email,
    Channel.WEBHOOK: send_webhook,
    Channel.SMS: send_sms,
    Channel.INAPP: send_inapp,
}
TASK_FOR_CHANNEL = {channel: function.__name__ for channel, function in DELIVERY_TASKS.items()}
# An inbox write is one Redis script (or a dict in memory): a failed one is Redis being away, worth a few
# tries over the usual back-off; no setting of its own until someone needs to tune it.
INAPP_MAX_ATTEMPTS = 5
INAPP_TIMEOUT_S = 10.0


def delivery_limits(settings: Settings) -> dict[Channel, tuple[int, float]]:
    """Per channel: attempts, and each attempt's timeout (a client's own timeout + 5 s to fail cleanly first)."""
    return {
        Channel.EMAIL: (settings.EMAIL_MAX_ATTEMPTS, settings.SMTP_TIMEOUT_S + 5),
        Channel.WEBHOOK: (settings.WEBHOOK_MAX_ATTEMPTS, settings.WEBHOOK_TIMEOUT_S + 5),
        Channel.SMS: (settings.SMS_MAX_ATTEMPTS, settings.SMS_TIMEOUT_S + 5),
        Channel.INAPP: (INAPP_MAX_ATTEMPTS, INAPP_TIMEOUT_S),
    }


def build_registry(settings: Settings, task_sets: Sequence[TaskSet] = ()) -> TaskRegistry:
    """Herald's delivery tasks, then the application's own (``task_sets``)."""
    registry = TaskRegistry()
    for channel, (max_attempts, timeout_s) in delivery_limits(settings).items():
        policy = RetryPolicy(
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            base_delay_s=settings.RETRY_BASE_DELAY_S,
            max_delay_s=settings.RETRY_MAX_DELAY_S,
        )
        registry.register(DELIVERY_TASKS[channel], policy=policy)
    for task_set in task_sets:
        task_set.register(registry)
    return registry
