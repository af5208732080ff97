"""The official openai and anthropic SDKs on aigw's vertex-ai routes (chat, streaming,
embeddings in the SDK's default base64 encoding and as floats, Anthropic messages).
Run by integration-tests/tests/it/vertex.rs with AIGW_URL set to the routes' prefix."""
import os

import anthropic
import openai

url = os.environ["AIGW_URL"]

oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-placeholder", max_retries=0)
chat = oa.chat.completions.create(model="ignored", messages=[{"role": "user", "content": "What is 1+1?"}], max_tokens=32)
assert chat.choices[0].message.content == "1+1 equals 2.", chat
assert chat.usage.total_tokens == 15, chat.usage

chunks = list(oa.chat.completions.create(model="ignored", messages=[{"role": "user", "content": "What is 1+1?"}], stream=True))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text.startswith("part0"), text
assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0, chunks[-1]

# The SDK asks for base64 by default and decodes it; floats on request.
for kwargs in ({}, {"encoding_format": "float"}):
    emb = oa.embeddings.create(model="ignored", input=["hello world", "x"], **kwargs)
    assert len(emb.data) == 2, emb
    values = emb.data[0].embedding
    assert len(values) == 4 and abs(values[0] - 0.0123) < 1e-6 and abs(values[1] + 0.0456) < 1e-6, values
    assert emb.data[1].embedding[3] == 1.0, emb.data[1]
    assert emb.usage.prompt_tokens == 3 and emb.usage.total_tokens == 3, emb.usage
print("openai: OK")

an = anthropic.Anthropic(base_url=url, api_key="placeholder", max_retries=0)
msg = an.messages.create(model="claude", max_tokens=32, messages=[{"role": "user", "content": "What is 1+1?"}])
assert msg.content[0].text == "1+1 equals 2.", msg
assert msg.usage.output_tokens == 6, msg.usage
with an.messages.stream(model="claude", max_tokens=32, messages=[{"role": "user", "content": "What is 1+1?"}]) as s:
    streamed = "".join(s.text_stream)
assert streamed.startswith("part0"), streamed
print("anthropic: OK")
