"""The data plane's upstream HTTP/1.1 client, on llhttp (httptools) and an asyncio.Protocol.

    client.py      Exchange: one upstream, send() with its one retry, every failure an UpstreamError
    pool.py        the keep-alive pool: a connection limit, LIFO reuse, idle expiry
    connection.py  one connection: the response parsed by llhttp, deadlines, flow control, keep-alive
    request.py     the request head on the wire, a streamed body sent behind it
    response.py    UpstreamResponse: the head, the body read chunk by chunk, release() or close()
    policy.py      what both clients (this one and aiohttp's) share: deadlines, retry rule, messages

Plain http only; canaryproxy/proxy/exchange.py keeps aiohttp's client for https upstreams.
"""
