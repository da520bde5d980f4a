"""Every task Herald's workers run, with its retry policy, in one visible place."""

from __future__ import annotations

from core.config import Settings
from core.registry import TaskRegistry
from core.retry import RetryPolicy
from tasks.delivery import send_email, send_webhook
from tasks.messages import Channel

TASK_FOR_CHANNEL = {Channel.EMAIL: send_email.__name__, Channel.WEBHOOK: send_webhook.__name__}


def build_registry(settings: Settings) -> TaskRegistry:
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
    return registry
