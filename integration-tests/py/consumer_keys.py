"""The official openai, anthropic and boto3 SDKs pass a consumer's key their usual way —
openai and anthropic as `api_key=`, boto3 as a Bedrock API key (AWS_BEARER_TOKEN_BEDROCK,
sent as `Authorization: Bearer`) — through aigw's key-auth (CONTRACT §12). A good key is
served; a missing or unknown one raises each SDK's authentication error. Run by
integration-tests/tests/it/consumers.rs with AIGW_URL, GOOD_KEY and BAD_KEY set."""
import os

import anthropic
import boto3
import botocore.exceptions
import openai
from botocore.config import Config

url, good, bad = os.environ["AIGW_URL"], os.environ["GOOD_KEY"], os.environ["BAD_KEY"]

# --- openai ------------------------------------------------------------------------------
oa = openai.OpenAI(base_url=url + "/v1", api_key=good, max_retries=0)
chat = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 1+1?"}])
assert chat.choices[0].message.content, chat
chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
assert chunks, "streamed"
try:
    openai.OpenAI(base_url=url + "/v1", api_key=bad, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown key was served")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and "Invalid API key in request" in str(e), e
    assert e.code == "invalid_api_key", e.body
print("openai: OK")

# --- anthropic (converted to the OpenAI backend) ------------------------------------------
an = anthropic.Anthropic(base_url=url, api_key=good, max_retries=0)
msg = an.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "What is 1+1?"}])
assert msg.content[0].text, msg
try:
    anthropic.Anthropic(base_url=url, api_key=bad, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown key was served")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body
print("anthropic: OK")

# --- boto3 with a Bedrock API key ---------------------------------------------------------
def bedrock(key):
    # botocore sends a bearer key only over HTTPS: the test puts TLS in front (AIGW_TLS_URL,
    # trusted through AWS_CA_BUNDLE), as a load balancer would.
    os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=os.environ["AIGW_TLS_URL"],
                        config=Config(retries={"max_attempts": 1}))

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
resp = bedrock(good).converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "What is 1+1?"}]}])
assert resp["output"]["message"]["content"][0]["text"], resp
try:
    bedrock(bad).converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    raise AssertionError("an unknown key was served")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "UnrecognizedClientException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 401, e.response
print("boto3: OK")
