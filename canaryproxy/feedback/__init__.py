"""Feedback on responses after the fact: a user's verdict, a downstream service's failure.

Every proxied response carries a signed token (`token.py`) with its attribution — the version
that served it, the request id, the weight and time at routing, the sticky key's hash — and the
request id is remembered in a bounded cache (`memory.py`). A client posts a verdict quoting
either to the endpoint (`endpoint.py`) on the data-plane listener; the post is read strictly
(`post.py`, `names.py`), counted once per (request id, name) (`claims.py`), and handed on as a
`core.types.Feedback` to the evidence — in one process directly, with several through the shared
outcome log (backends/redis_feed.py) to every process's evidence, so the leader's judge sees it.

Import the modules themselves: config/feedback.py reads `names` and `settings` without pulling in
the endpoint (aiohttp) or the Redis claims.
"""
