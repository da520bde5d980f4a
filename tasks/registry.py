"""Every task Herald's workers run, with its retry policy, in one visible place (and the app's own TaskSets)."""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Settings
from core.registry import TaskRegistry
from core.retry import RetryPolicy
from core.taskset import TaskSet
from tasks.delivery import send_email, send_inapp, send_sms, send_webhook
from tasks.messages import Channel

TASK_FOR_CHANNEL = {
    Channel.EMAIL: send_email.__name__,
    Channel.WEBHOOK: send_webhook.__name__,
    Channel.SMS: send_sms.__name__,
    Channel.INAPP: send_inapp.__name__,
}
# An inbox write is one Redis script (or a dict in memory): a failed one is Redis being away, worth a few
# tries over the usual back-off; no setting of its own until someone needs to tune it.
INAPP_MAX_ATTEMPTS = 5
INAPP_TIMEOUT_S = 10.0


def build_registry(settings: Settings, task_sets: Sequence[TaskSet] = ()) -> TaskRegistry:
    """Herald's delivery tasks, then the application's own (``task_sets``)."""
    registry = TaskRegistry()
    registry.register(
        send_email,
        policy=RetryPolicy(
            max_attempts=settings.EMAIL_MAX_ATTEMPTS,
            timeout_s=settings.SMTP_TIMEOUT_S + 5,
            base_delay_s=settings.RETRY_BASE_DELAY_S,
            max_delay_s=settings.RETRY_MAX_DELAY_S,
        ),
    )
    registry.register(
        send_webhook,
        policy=RetryPolicy(
            max_attempts=settings.WEBHOOK_MAX_ATTEMPTS,
            timeout_s=settings.WEBHOOK_TIMEOUT_S + 5,
            base_delay_s=settings.RETRY_BASE_DELAY_S,
            max_delay_s=settings.RETRY_MAX_DELAY_S,
        ),
    )
    registry.register(
        send_sms,
        policy=RetryPolicy(
            max_attempts=settings.SMS_MAX_ATTEMPTS,
            timeout_s=settings.SMS_TIMEOUT_S + 5,
            base_delay_s=settings.RETRY_BASE_DELAY_S,
            max_delay_s=settings.RETRY_MAX_DELAY_S,
        ),
    )
    registry.register(
        send_inapp,
        policy=RetryPolicy(
            max_attempts=INAPP_MAX_ATTEMPTS,
            timeout_s=INAPP_TIMEOUT_S,
            base_delay_s=settings.RETRY_BASE_DELAY_S,
            max_delay_s=settings.RETRY_MAX_DELAY_S,
        ),
    )
    for task_set in task_sets:
        task_set.register(registry)
    return registry
