"""boto3's bedrock-runtime client and the official openai SDK, pointed at aigw, reach a
Bedrock fake that verifies the SigV4 signature aigw computes. Run by
integration-tests/tests/it/bedrock.rs with AIGW_URL set."""
import json
import os

import boto3
import openai
from botocore.config import Config

url = os.environ["AIGW_URL"]
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"

# boto3 signs with its own (placeholder) keys; aigw re-signs with the route's.
client = boto3.client(
    "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
    aws_access_key_id="AKIDCLIENTPLACEHOLDER", aws_secret_access_key="placeholder",
    config=Config(retries={"max_attempts": 1}),
)
resp = client.converse(
    modelId=MODEL,
    messages=[{"role": "user", "content": [{"text": "What is 1+1?"}]}],
    inferenceConfig={"maxTokens": 256},
)
text = resp["output"]["message"]["content"][0]["text"]
assert text == f"1 + 1 = 2. (model={MODEL})", text
assert resp["usage"]["totalTokens"] == 23, resp["usage"]

stream = client.converse_stream(
    modelId=MODEL,
    messages=[{"role": "user", "content": [{"text": "What is 1+1?"}]}],
)
events, parts, usage = [], [], None
for event in stream["stream"]:
    kind = next(iter(event))
    events.append(kind)
    if kind == "contentBlockDelta":
        parts.append(event[kind]["delta"]["text"])
    if kind == "metadata":
        usage = event[kind]["usage"]
assert events[0] == "messageStart" and events[-1] == "metadata", events
assert "".join(parts) == f"1 + 1 = 2. (model={MODEL})", parts
assert usage["outputTokens"] == 9, usage
print("boto3: OK")

# The openai SDK on a Bedrock route: chat, streaming, and a tool call.
oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-placeholder", max_retries=0)
chat = oa.chat.completions.create(model="ignored", messages=[{"role": "user", "content": "What is 1+1?"}], max_tokens=64)
assert chat.choices[0].message.content == f"1 + 1 = 2. (model={MODEL})", chat
assert chat.usage.total_tokens == 23, chat.usage

chunks = list(oa.chat.completions.create(
    model="ignored", messages=[{"role": "user", "content": "What is 1+1?"}], stream=True,
    stream_options={"include_usage": True},
))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == f"1 + 1 = 2. (model={MODEL})", text
assert chunks[-1].usage.total_tokens == 23, chunks[-1]

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
call = oa.chat.completions.create(model="ignored", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools)
tc = call.choices[0].message.tool_calls[0]
assert call.choices[0].finish_reason == "tool_calls" and tc.function.name == "get_weather", call
assert json.loads(tc.function.arguments) == {"city": "Oslo"}, tc
follow = oa.chat.completions.create(model="ignored", tools=tools, messages=[
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
    {"role": "tool", "tool_call_id": tc.id, "content": "3°C"},
])
assert follow.choices[0].finish_reason == "stop", follow
print("openai: OK")
