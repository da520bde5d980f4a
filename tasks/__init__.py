"""The notification domain: channels, templates and the delivery tasks that run on ``core``."""
