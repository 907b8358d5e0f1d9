"""The data plane's HTTP/1.1 server: an asyncio protocol on llhttp (httptools), in llhttp's strict mode.

- `request.py`: the request as the data plane reads it (the part of aiohttp's `BaseRequest` it used)
  and its body as it arrives (`BodyStream`, with flow control back to the connection).
- `response.py`: `StreamResponse` (head, then the body chunk by chunk, chunked when it has no
  length), `Response` (a whole body at once) and `json_response`.
- `connection.py`: one client connection: framing (wire.py) ahead of llhttp, the checks aiohttp's
  parser made beyond llhttp's, keep-alive and pipelining in order, the header and idle timeouts,
  flow control both ways, lingering close, and the handler task a disconnect cancels.
- `server.py`: the listener: accepting, draining (idle connections closed, busy ones after their
  response), shutting down.

The data plane imports the request and response types from `canaryproxy.proxy.http`, not from here.
"""
