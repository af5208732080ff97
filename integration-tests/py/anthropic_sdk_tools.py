"""The official Anthropic Python SDK, pointed at aigw, runs a streamed multi-turn
tool-use conversation against an OpenAI-protocol backend (the test's scripted fake).
Run by integration-tests/tests/it/anthropic.rs with AIGW_URL set."""
import os
import sys

import anthropic

client = anthropic.Anthropic(base_url=os.environ["AIGW_URL"], api_key="sk-ant-placeholder", max_retries=0)
tools = [{
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
messages = [{"role": "user", "content": "What's the weather in Oslo?"}]

# Turn 1, streamed: the model asks for the tool.
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, system="Be terse.", messages=messages, tools=tools) as stream:
    events = [event.type for event in stream]
    first = stream.get_final_message()
assert events[0] == "message_start", events
assert first.stop_reason == "tool_use", first
calls = [b for b in first.content if b.type == "tool_use"]
assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].input == {"city": "Oslo"}, first.content
assert first.usage.output_tokens == 12, first.usage

# Turn 2, streamed: the tool result goes back, the model answers.
messages += [
    {"role": "assistant", "content": first.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "3°C"}]},
]
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, messages=messages, tools=tools) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == "It is 3°C in Oslo.", text
assert final.stop_reason == "end_turn", final
assert final.usage.cache_read_input_tokens == 8 and final.usage.input_tokens == 32, final.usage

# The same turn without streaming.
msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=messages, tools=tools)
assert msg.content[0].text == "It is 3°C in Oslo.", msg

# Errors come back as the SDK's own exception types.
try:
    client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[])
    sys.exit("expected a 400")
except anthropic.BadRequestError as e:
    assert e.status_code == 400

print("anthropic sdk: OK")
