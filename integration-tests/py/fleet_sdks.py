"""The official openai, anthropic and boto3 SDKs through the fleet's load balancer, against
fake-llm behind the routes of deploy/routes/*.json (chat, streaming, tools, embeddings,
Responses, Messages, Converse, ConverseStream; chat on Vertex AI with a GCP service account). The SDKs carry placeholder keys: the
routes hold the real (fake) ones. Run by integration-tests/tests/fleet with AIGW_URL set."""
import json
import os

import anthropic
import boto3
import openai
from botocore.config import Config

url = os.environ["AIGW_URL"]

# --- openai: chat, streaming, tools, embeddings, Responses -----------------------------
oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-placeholder", max_retries=0)
chat = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 1+1?"}])
assert chat.choices[0].message.content == "1+1 equals 2.", chat
assert chat.usage.total_tokens == 31, chat.usage

chunks = list(oa.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 1+1?"}], stream=True,
    stream_options={"include_usage": True},
))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "part0 part1 part2 ", text
assert chunks[-1].usage.total_tokens == 14, chunks[-1]

tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "Weather in Oslo?"}]
call = oa.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
tc = call.choices[0].message.tool_calls[0]
assert call.choices[0].finish_reason == "tool_calls" and tc.function.name == "get_weather", call
assert json.loads(tc.function.arguments) == {"city": "Oslo"}, tc
messages += [{"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
             {"role": "tool", "tool_call_id": tc.id, "content": "3°C"}]
streamed = list(oa.chat.completions.create(model="gpt-4o", messages=messages, tools=tools, stream=True))
answer = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
assert answer == "It is 3°C in Oslo.", answer

emb = oa.embeddings.create(model="text-embedding-3-small", input="hello world")
assert len(emb.data[0].embedding) == 3 and emb.usage.total_tokens == 2, emb

resp = oa.responses.create(model="gpt-4.1", input="Say hi")
assert resp.output_text == "Hi!" and resp.usage.total_tokens == 62, resp
events = [e.type for e in oa.responses.create(model="gpt-4.1", input="Say hi", stream=True)]
assert events[0] == "response.created" and events[-1] == "response.completed", events
print("openai: OK (chat, stream, tools, embeddings, responses)")

# --- openai on Vertex AI: the route holds a GCP service account; the token cache mints ---
vx = openai.OpenAI(base_url=url + "/vertex/v1", api_key="placeholder", max_retries=0)
chat = vx.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "What is 1+1?"}])
assert chat.choices[0].message.content == "1+1 equals 2." and chat.model == "google/gemini-2.5-flash", chat
chunks = list(vx.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "What is 1+1?"}], stream=True))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "part0 part1 part2 ", text
print("openai on vertex-ai: OK (chat, stream)")

# --- anthropic: Messages, streaming ----------------------------------------------------
an = anthropic.Anthropic(base_url=url, api_key="sk-ant-placeholder", max_retries=0)
msg = an.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "What is 1+1?"}])
assert msg.content[0].text == "1+1 equals 2." and msg.stop_reason == "end_turn", msg
assert msg.usage.output_tokens == 30, msg.usage
with an.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "What is 1+1?"}]) as s:
    kinds = [e.type for e in s]
    final = s.get_final_message()
assert kinds[0] == "message_start", kinds
assert "".join(b.text for b in final.content if b.type == "text") == "1+1 equals 2.", final
print("anthropic: OK (messages, stream)")

# --- boto3: Converse, ConverseStream, tool use -----------------------------------------
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
br = boto3.client(
    "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
    aws_access_key_id="AKIDCLIENTPLACEHOLDER", aws_secret_access_key="placeholder",
    config=Config(retries={"max_attempts": 1}),
)
out = br.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "What is 1+1?"}]}],
                  inferenceConfig={"maxTokens": 256})
assert out["output"]["message"]["content"][0]["text"] == f"1 + 1 = 2. (model={MODEL})", out
assert out["usage"]["totalTokens"] == 23, out["usage"]
stream = br.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "What is 1+1?"}]}])
kinds, parts = [], []
for event in stream["stream"]:
    kind = next(iter(event))
    kinds.append(kind)
    if kind == "contentBlockDelta":
        parts.append(event[kind]["delta"]["text"])
assert kinds[0] == "messageStart" and kinds[-1] == "metadata", kinds
assert "".join(parts) == f"1 + 1 = 2. (model={MODEL})", parts
tool_config = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]}
use = br.converse(modelId=MODEL, toolConfig=tool_config, messages=[{"role": "user", "content": [{"text": "Weather in Oslo?"}]}])
assert use["stopReason"] == "tool_use", use
assert use["output"]["message"]["content"][0]["toolUse"]["input"] == {"city": "Oslo"}, use
print("boto3: OK (converse, converse_stream, tool use)")
