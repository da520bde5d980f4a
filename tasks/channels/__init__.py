"""Delivery channels. Each decides, from its own protocol, which failures are worth retrying."""
