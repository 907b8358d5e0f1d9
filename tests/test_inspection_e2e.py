"""Inspection end to end: the openai SDK through the proxy; /metrics says what the upstream sent."""

import json

import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.llm import chat_completion, chat_handler, chunk
from tests.support import eventually

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}},
                       "additionalProperties": False},
    },
}
ANSWER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "strict": True, "schema": {
        "type": "object", "required": ["answer"], "additionalProperties": False,
        "properties": {"answer": {"type": "string"}}}},
}


async def structured_or_tools(request: web.Request) -> web.StreamResponse:
    """A model server that answers structured-output and tool requests; `bad` in the prompt breaks
    the output so the schema check has something to catch."""
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    if body.get("tools"):
        arguments = '{"city": "Paris"}' if "bad" not in prompt else '{"town": 3}'
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}
            await response.write(chunk({"role": "assistant", "tool_calls": [call]}))
            for piece in (arguments[:5], arguments[5:]):
                await response.write(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            await response.write(chunk({}, finish_reason="tool_calls"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(chunk({}, choices=False, usage={
                    "prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}))
            await response.write(b"data: [DONE]\n\n")
            return response
        completion = chat_completion("", prompt_tokens=30, completion_tokens=9, finish_reason="tool_calls")
        completion["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
        return web.json_response(completion)
    content = json.dumps({"answer": "42"}) if "bad" not in prompt else '{"answer": 42'
    return web.json_response(chat_completion(content, prompt_tokens=20, completion_tokens=7))


@pytest.fixture
async def llm(upstreams, make_proxy):
    for upstream in upstreams:
        upstream.on("POST", "/v1/chat/completions", chat_handler)
    stable, canary = upstreams
    canary.on("POST", "/v1/chat/completions", structured_or_tools)
    proxy = await make_proxy(routing={"weight": 0, "override_header": "x-canary-version"},
                             pricing={"models": {"m-1": {"input": 1.0, "output": 2.0}}})
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk", max_retries=0)
    yield proxy, client
    await client.close()


async def scrape(proxy) -> dict[tuple[str, tuple], float]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_tokens_ttft_and_cost_in_metrics_match_what_the_upstream_sent(llm):
    proxy, client = llm
    completion = await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "one two three"}])
    assert completion.usage.completion_tokens == 3
    # A stream that did not ask for usage: the proxy asks upstream, counts it, and removes the
    # extra chunk, so the client receives exactly what it asked for.
    stream = await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "four five six seven"}], stream=True)
    events = [event async for event in stream]
    assert all(not event.usage for event in events) and all(event.choices for event in events)
    assert "".join(e.choices[0].delta.content or "" for e in events) == "four five six seven "

    outcomes = await eventually(lambda: len(proxy.test_sink.outcomes) == 2 and proxy.test_sink.outcomes)
    assert [o.completion_tokens for o in outcomes] == [3, 4]
    assert outcomes[1].ttft is not None and outcomes[1].stream and not outcomes[1].usage_missing
    samples = await scrape(proxy)
    assert value(samples, "canaryproxy_tokens_total", version="stable", kind="prompt", source="reported") == 24
    assert value(samples, "canaryproxy_tokens_total", version="stable", kind="completion", source="reported") == 7
    assert value(samples, "canaryproxy_requests_total", version="stable", status_class="2xx") == 2
    assert value(samples, "canaryproxy_time_to_first_token_seconds_count", version="stable") == 1
    assert value(samples, "canaryproxy_cost_usd_total", version="stable") == pytest.approx((24 * 1 + 7 * 2) / 1e6)
    assert value(samples, "canaryproxy_output_length_chars_sum", version="stable") == len("one two three") + len(
        "four five six seven ")


async def test_structured_outputs_and_tool_calls_are_schema_checked(llm):
    proxy, client = llm
    canary = {"x-canary-version": "canary"}
    ok = await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "answer"}], response_format=ANSWER_SCHEMA,
        extra_headers=canary)
    assert json.loads(ok.choices[0].message.content) == {"answer": "42"}
    await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "bad answer"}], response_format=ANSWER_SCHEMA,
        extra_headers=canary)
    call = await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], extra_headers=canary)
    assert call.choices[0].message.tool_calls[0].function.name == "get_weather"
    stream = await client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "bad weather?"}], tools=[WEATHER_TOOL], stream=True,
        extra_headers=canary)
    arguments = "".join([e.choices[0].delta.tool_calls[0].function.arguments or ""
                         async for e in stream if e.choices and e.choices[0].delta.tool_calls])
    assert arguments == '{"town": 3}'

    outcomes = await eventually(lambda: len(proxy.test_sink.outcomes) == 4 and proxy.test_sink.outcomes)
    assert [o.schema_ok for o in outcomes] == [True, False, True, False]
    samples = await scrape(proxy)
    assert value(samples, "canaryproxy_schema_checks_total", version="canary") == 4
    assert value(samples, "canaryproxy_schema_failures_total", version="canary") == 2
    assert value(samples, "canaryproxy_tokens_total", version="canary", kind="completion", source="reported") == 7 + 7 + 9 + 9


async def test_a_content_filter_finish_counts_as_a_guardrail_intervention(upstreams, make_proxy):
    stable, _ = upstreams

    async def filtered(request):
        return web.json_response(chat_completion("I can't", finish_reason="content_filter"))

    stable.on("POST", "/v1/chat/completions", filtered)
    proxy = await make_proxy()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk", max_retries=0)
    await client.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "x"}])
    await client.close()
    samples = await scrape(proxy)
    assert value(samples, "canaryproxy_guardrail_interventions_total", version="stable",
                 source="content_filter") == 1


async def test_a_truncated_stream_is_a_failure_of_its_version(upstreams, make_proxy):
    stable, _ = upstreams

    async def cut_short(request):
        # Ends cleanly at the HTTP level, but without a finish reason or [DONE].
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        await response.write(chunk({"content": "half an ans"}))
        await response.write_eof()
        return response

    stable.on("POST", "/v1/chat/completions", cut_short)
    proxy = await make_proxy()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk", max_retries=0)
    stream = await client.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    [event async for event in stream]
    await client.close()
    outcome = (await eventually(lambda: proxy.test_sink.outcomes))[0]
    assert outcome.truncated and outcome.failed and outcome.usage_missing
    samples = await scrape(proxy)
    assert value(samples, "canaryproxy_truncated_streams_total", version="stable") == 1


async def test_a_stream_broken_by_the_upstream_still_records_what_was_read(upstreams, make_proxy):
    stable, _ = upstreams

    async def reset_after_two_tokens(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        await response.write(chunk({"content": "two words"}))
        request.transport.abort()
        return response

    stable.on("POST", "/v1/chat/completions", reset_after_two_tokens)
    proxy = await make_proxy()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.data_port}/v1", api_key="sk", max_retries=0)
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
        [event async for event in stream]
    await client.close()
    outcome = (await eventually(lambda: proxy.test_sink.outcomes))[0]
    assert outcome.truncated and outcome.error.value == "reset"
    assert outcome.ttft is not None and outcome.output_chars == len("two words")
