"""The official OpenAI Python SDK, pointed at aigw, talks to a `provider: anthropic` route
(converted to the Messages API by the gateway, CONTRACT §9): chat, streaming with the usage
chunk, and a two-turn tool-use conversation. The backend is the test's strict Anthropic
fake. Run by integration-tests/tests/it/multi.rs with AIGW_URL set."""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["AIGW_URL"] + "/v1", api_key="sk-placeholder", max_retries=0)
MODEL = "claude-sonnet-4-5"

# Chat.
r = client.chat.completions.create(model=MODEL, messages=[
    {"role": "system", "content": "You are a mathematician"},
    {"role": "user", "content": "What is 1+1?"},
])
assert r.object == "chat.completion", r
assert r.choices[0].message.content == "1+1 equals 2.", r
assert r.choices[0].finish_reason == "stop", r
assert r.usage.prompt_tokens == 350 and r.usage.completion_tokens == 30, r.usage
assert r.usage.prompt_tokens_details.cached_tokens == 200, r.usage

# Streaming, with the usage chunk.
stream = client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": "What is 1+1?"}])
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
assert text == "1+1 equals 2.", text
assert finish == "stop", finish
assert usage is not None and usage.prompt_tokens == 350 and usage.total_tokens == 380, usage

# Tools: the model calls get_weather, the result goes back, the model answers (streamed).
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
first = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)
call = first.choices[0].message.tool_calls[0]
assert first.choices[0].finish_reason == "tool_calls", first
assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}, call

# The same turn streamed: tool-call deltas reassemble into the same call.
stream = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True)
name, args, finish = "", "", None
for chunk in stream:
    for c in chunk.choices:
        for tc in c.delta.tool_calls or []:
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finish = c.finish_reason or finish
assert name == "get_weather" and json.loads(args) == {"city": "Oslo"} and finish == "tool_calls", (name, args, finish)

messages += [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "3°C"},
]
stream = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True)
text = "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
assert text == "It is 3°C in Oslo.", text

# Errors come back as the SDK's own exception types.
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    sys.exit("expected a 400")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
try:
    client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}])
    sys.exit("expected a 429")
except openai.RateLimitError as e:
    assert e.status_code == 429 and e.response.headers.get("retry-after") == "7", e
    assert e.body["code"] == "rate_limit_error", e.body

print("openai sdk on anthropic: OK")
