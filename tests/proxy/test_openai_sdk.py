"""The real openai SDK, talking to real upstream servers through the proxy."""

import openai
import pytest

from tests.llm import chat_handler


@pytest.fixture
async def llm_proxy(upstreams, make_proxy):
    stable, canary = upstreams
    for upstream in upstreams:
        upstream.on("POST", "/v1/chat/completions", chat_handler)
    proxy = await make_proxy(routing={"weight": 50, "sticky": ["header:x-user-id"]})
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk-test", max_retries=0
    )
    yield proxy, client
    await client.close()


async def test_chat_completion_through_the_proxy(llm_proxy, upstreams):
    proxy, client = llm_proxy
    raw = await client.chat.completions.with_raw_response.create(
        model="m-1",
        messages=[{"role": "user", "content": "hello there proxy"}],
        extra_headers={"x-user-id": "alice"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello there proxy"
    assert completion.usage.total_tokens == 15
    served_by = raw.headers["x-canary-version"]
    assert served_by in ("stable", "canary")
    stable, canary = upstreams
    assert len((stable if served_by == "stable" else canary).seen) == 1


async def test_streaming_chat_completion_through_the_proxy(llm_proxy):
    proxy, client = llm_proxy
    stream = await client.chat.completions.create(
        model="m-1",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for event in stream:
        if event.choices:
            text += event.choices[0].delta.content or ""
        if event.usage:
            usage = event.usage
    assert text == "one two three four "
    assert usage is not None and usage.completion_tokens == 4


async def test_sticky_user_keeps_its_role(llm_proxy):
    proxy, client = llm_proxy
    roles = set()
    for _ in range(5):
        raw = await client.chat.completions.with_raw_response.create(
            model="m-1", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-user-id": "bob"},
        )
        roles.add(raw.headers["x-canary-version"])
    assert len(roles) == 1


async def test_an_unreachable_upstream_is_a_bad_gateway_error_for_the_sdk(make_proxy, unused_tcp_port):
    proxy = await make_proxy(stable_url=f"http://127.0.0.1:{unused_tcp_port}")
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk-test", max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await client.close()
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_connect"
    assert "stable upstream" in info.value.body["message"]
