"""The model simulator: what the `openai` SDK reads from it, its misbehaviour, and /sim/config."""

from __future__ import annotations

import json
import random
import re
import signal
import statistics
import subprocess
import sys
import urllib.request

import aiohttp
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI

from canaryproxy.errors import ConfigError
from canaryproxy.sim.replies import WRITE_INTERVAL, Behaviour, ChatRequest, plan_reply
from canaryproxy.sim.simulator import ModelSimulator, _batches

FAST = Behaviour(latency=0.02, ttft=0.005, tokens_mean=40, error_rate=0.0)
PROMPT = [{"role": "user", "content": "Say something about canary releases, please!!"}]
PROMPT_TOKENS = 12  # 46 characters / 4, rounded up
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "mood": {"enum": ["calm", "busy"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "author": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
    "required": ["answer", "score", "mood"],
    "additionalProperties": False,
}


@pytest.fixture
async def simulator():
    started: list[ModelSimulator] = []

    async def start(behaviour: Behaviour = FAST, seed: int = 7) -> ModelSimulator:
        sim = ModelSimulator(behaviour, seed=seed)
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


def sdk(sim: ModelSimulator) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)


async def test_a_chat_completion_parses_with_the_sdk_and_reports_usage(simulator):
    sim = await simulator()
    async with sdk(sim) as client:
        completion = await client.chat.completions.create(model="any", messages=PROMPT)
        models = await client.models.list()
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == "sim-1"
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content and choice.message.content == choice.message.content.strip()
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == len(choice.message.content.split())  # one word a token
    assert completion.usage.total_tokens == PROMPT_TOKENS + completion.usage.completion_tokens
    assert [m.id for m in models.data] == ["sim-1"]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_stream_parses_with_the_sdk(simulator, include_usage):
    sim = await simulator()
    async with sdk(sim) as client:
        stream = await client.chat.completions.create(
            model="any", messages=PROMPT, stream=True,
            **({"stream_options": {"include_usage": True}} if include_usage else {}))
        chunks = [chunk async for chunk in stream]
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    deltas = [c.choices[0].delta.content for c in with_choices[1:-1]]
    assert all(deltas) and with_choices[-1].choices[0].finish_reason == "stop"
    usage_chunks = [c for c in chunks if not c.choices]
    if include_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1].usage.completion_tokens == len(deltas)
        assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    else:
        assert usage_chunks == [] and all(c.usage is None for c in chunks)


async def test_a_stream_ends_with_done_and_sends_the_first_token_after_the_role_chunk(simulator):
    sim = await simulator()
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.url + "/v1/chat/completions",
                             json={"messages": PROMPT, "stream": True}) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            body = await response.read()
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_answers_are_valid_instances_unless_broken(simulator, stream):
    request = {"model": "any", "messages": PROMPT, "stream": stream,
               "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}
    sim = await simulator()
    async with sdk(sim) as client:
        for _ in range(5):
            document = json.loads(await _content(client, request))
            jsonschema.validate(document, SCHEMA)
        sim.configure({"schema_break_rate": 1.0})
        for _ in range(10):
            text = await _content(client, request)
            with pytest.raises((ValueError, jsonschema.ValidationError)):
                jsonschema.validate(json.loads(text), SCHEMA)


async def test_json_object_and_unsupported_schemas_still_get_a_json_object(simulator):
    sim = await simulator()
    async with sdk(sim) as client:
        assert isinstance(json.loads(await _content(client, {
            "model": "any", "messages": PROMPT, "response_format": {"type": "json_object"}})), dict)
        unsupported = {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}}
        assert json.loads(await _content(client, {
            "model": "any", "messages": PROMPT,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": unsupported}}})) == {}


async def _content(client: AsyncOpenAI, request: dict) -> str:
    if not request.get("stream"):
        return (await client.chat.completions.create(**request)).choices[0].message.content
    stream = await client.chat.completions.create(**request)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(simulator):
    sim = await simulator(Behaviour(latency=0.02, ttft=0.005, tokens_mean=200, error_rate=0.0))
    async with sdk(sim) as client:
        completion = await client.chat.completions.create(model="any", messages=PROMPT, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5 == len(completion.choices[0].message.content.split())


@pytest.mark.parametrize("stream", [False, True])
async def test_a_guardrail_intervention_is_a_content_filter_finish_with_the_answer_cut(simulator, stream):
    sim = await simulator(Behaviour(latency=0.02, ttft=0.005, tokens_mean=400, error_rate=0.0,
                                    guardrail_rate=1.0))
    async with sdk(sim) as client:
        response = await client.chat.completions.create(
            model="any", messages=PROMPT, stream=True, stream_options={"include_usage": True}) \
            if stream else await client.chat.completions.create(model="any", messages=PROMPT)
        if stream:
            chunks = [c async for c in response]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            usage = chunks[-1].usage
        else:
            finish, usage = response.choices[0].finish_reason, response.usage
    assert finish == "content_filter"
    assert usage.completion_tokens < 200  # a quarter of about 400


async def test_a_forced_tool_call_has_json_arguments_matching_the_function(simulator):
    sim = await simulator()
    tools = [{"type": "function", "function": {"name": "rate_answer", "parameters": SCHEMA}}]
    async with sdk(sim) as client:
        completion = await client.chat.completions.create(
            model="any", messages=PROMPT, tools=tools,
            tool_choice={"type": "function", "function": {"name": "rate_answer"}})
        stream = await client.chat.completions.create(
            model="any", messages=PROMPT, tools=tools, tool_choice="required", stream=True)
        chunks = [c async for c in stream]
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls" and call.function.name == "rate_answer"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    streamed = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                       for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    jsonschema.validate(json.loads(streamed), SCHEMA)


async def test_errors_are_openai_shaped_500s_at_about_the_configured_rate(simulator):
    sim = await simulator(Behaviour(latency=0.001, ttft=0.001, tokens_mean=5, error_rate=0.2), seed=1)
    errors = []
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.post(sim.url + "/v1/chat/completions", json={"messages": PROMPT}) as response:
                if response.status != 200:
                    assert response.status == 500
                    errors.append(await response.json())
    assert 40 <= len(errors) <= 80  # 60 expected; the binomial sd is 7
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    async with sdk(sim) as client:
        sim.configure({"error_rate": 1.0})
        with pytest.raises(openai.InternalServerError) as error:
            await client.chat.completions.create(model="any", messages=PROMPT)
    assert "simulated model server failed" in error.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_say_what_a_rating_user_would_think_at_the_dislike_rate(simulator, stream):
    sim = await simulator(Behaviour(latency=0.001, ttft=0.001, tokens_mean=5, error_rate=0.0, dislike_rate=0.3),
                          seed=2)
    verdicts = []
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.post(sim.url + "/v1/chat/completions", json={"messages": PROMPT, "stream": stream}) as r:
                await r.read()
                verdicts.append(r.headers["X-Sim-Verdict"])
    assert set(verdicts) == {"liked", "disliked"}
    assert 65 <= verdicts.count("disliked") <= 115  # 90 expected; the binomial sd is 8


@pytest.mark.parametrize("stream", [False, True])
async def test_truncation_aborts_the_connection_mid_body(simulator, stream):
    sim = await simulator(Behaviour(latency=0.05, ttft=0.005, tokens_mean=100, error_rate=0.0, truncate_rate=1.0))
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.url + "/v1/chat/completions", json={"messages": PROMPT, "stream": stream}) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


async def test_behaviour_changes_at_run_time_through_sim_config(simulator):
    sim = await simulator()
    async with aiohttp.ClientSession() as http:
        async with http.get(sim.url + "/sim/config") as r:
            assert await r.json() == FAST.to_dict()
        async with http.post(sim.url + "/sim/config", json={"error_rate": 1, "latency": "30ms"}) as r:
            assert r.status == 200
            assert (await r.json())["error_rate"] == 1.0
        assert sim.behaviour.latency == 0.03 and sim.behaviour.tokens_mean == FAST.tokens_mean
        async with http.post(sim.url + "/v1/chat/completions", json={"messages": PROMPT}) as r:
            assert r.status == 500


@pytest.mark.parametrize("body, message", [
    (b'{"error_rate": 1.5}', "error_rate: must be a probability from 0 to 1, got 1.5"),
    (b'{"latency": "soon"}', "latency: expected a duration like 5s"),
    (b'{"ttft": "1s"}', "ttft: must be a duration from 0 to latency (0.02s), got 1.0"),
    (b'{"tokens_mean": true}', "tokens_mean: expected a number, got True"),
    (b'{"colour": "red", "error_rate": -1}', "colour: unknown setting; known settings: latency, ttft"),
    (b'{"error_rate": 0.5', "the body must be a JSON object of settings to change"),
    (b'[1]', "the body must be a JSON object of settings to change, got list"),
])
async def test_bad_config_changes_are_400_with_a_precise_message_and_change_nothing(simulator, body, message):
    sim = await simulator()
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.url + "/sim/config", data=body) as r:
            assert r.status == 400
            error = (await r.json())["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert sim.behaviour == FAST


async def test_bad_chat_requests_are_400s(simulator):
    sim = await simulator()
    async with aiohttp.ClientSession() as http:
        for body, message in ((b"{", "not valid JSON"), (b'{"messages": []}', "'messages' must be a non-empty"),
                              (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
                               "'max_tokens' must be an integer >= 1")):
            async with http.post(sim.url + "/v1/chat/completions", data=body) as r:
                assert r.status == 400 and message in (await r.json())["error"]["message"]


def test_timing_and_length_follow_the_documented_distributions():
    behaviour = Behaviour(latency=0.4, ttft=0.1, tokens_mean=200, error_rate=0.0)
    rng = random.Random(3)
    request = ChatRequest(stream=True, include_usage=False, prompt_chars=40, max_tokens=None,
                          response_format=None, schema=None, forced_tool=None)
    replies = [plan_reply(request, behaviour, rng) for _ in range(4000)]
    assert statistics.fmean(r.latency for r in replies) == pytest.approx(0.4, rel=0.03)
    assert statistics.fmean(len(r.pieces) for r in replies) == pytest.approx(200, rel=0.03)
    assert all(0 < r.ttft <= r.latency for r in replies)
    for reply in replies[:200]:
        batches = _batches(reply)
        times = [at for at, _ in batches]
        assert times[0] == reply.ttft and times[-1] == pytest.approx(reply.latency)
        assert times == sorted(times) and len(batches[0][1]) == 1
        assert sum(len(pieces) for _, pieces in batches) == len(reply.pieces)
        assert len(batches) <= 2 + (reply.latency - reply.ttft) / WRITE_INTERVAL


def test_a_behaviour_is_validated_as_a_whole():
    with pytest.raises(ConfigError) as error:
        Behaviour(latency=0.1, ttft=0.2, error_rate=2.0, model="")
    assert error.value.problems == [
        "ttft: must be a duration from 0 to latency (0.1s), got 0.2",
        "error_rate: must be a probability from 0 to 1, got 2.0",
        "model: must be a non-empty printable name, got ''",
    ]


def test_the_simulate_upstream_command_serves_until_ctrl_c():
    command = [sys.executable, "-m", "canaryproxy", "simulate-upstream", "--port", "0", "--latency", "10ms",
               "--ttft", "5ms", "--seed", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            banner = process.stdout.readline()
            port = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
            assert port, banner
            with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/sim/config", timeout=10) as response:
                assert json.loads(response.read())["latency"] == 0.01
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
            assert "Traceback" not in process.stderr.read()
        finally:
            process.kill()


def test_bad_simulate_upstream_flags_exit_2_naming_the_flag():
    result = subprocess.run(
        [sys.executable, "-m", "canaryproxy", "simulate-upstream", "--port", "0", "--error-rate", "3",
         "--latency", "fast"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error_rate: must be a probability from 0 to 1, got 3.0" in result.stderr
    assert "latency: expected a duration" in result.stderr
