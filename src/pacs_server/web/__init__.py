"""The HTTP side: /metrics, /status, /healthz and the admin API, served by aiohttp in the
server's own event loop. The only package that imports aiohttp; it knows the rest of the
server only through the `Control` object the composition root hands it (web/ports.py).
"""
