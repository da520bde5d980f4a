"""Herald's generic task module: define tasks, enqueue them, run them with retries, watch their status.

It imports nothing from ``api`` or ``tasks``; any FastAPI (or plain asyncio) app can use it.
"""
