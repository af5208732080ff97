"""The official openai, anthropic and boto3 SDKs on consumers with a tiny ai-budget
(CONTRACT §14): served while the spend is below the budget, then each SDK raises its own
rate-limit error (OpenAI RateLimitError of type insufficient_quota, Anthropic
RateLimitError with rate_limit_error, boto3 ThrottlingException), with retry-after. Run by
integration-tests/tests/it/budgets.rs with AIGW_URL, AIGW_TLS_URL and the keys set."""
import os
import time

import anthropic
import boto3
import botocore.exceptions
import openai
from botocore.config import Config

url = os.environ["AIGW_URL"]


def until_refused(call, refused, what):
    served = 0
    for _ in range(12):
        try:
            call()
            served += 1
        except refused as e:
            assert served >= 2, f"{what}: refused after {served} requests: {e}"
            return e
        time.sleep(0.3)  # the charge lands in Redis after the answer
    raise AssertionError(f"{what}: never refused ({served} served)")


# --- openai ------------------------------------------------------------------------------
oa = openai.OpenAI(base_url=url + "/v1", api_key=os.environ["OA_KEY"], max_retries=0)
e = until_refused(lambda: oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 1+1?"}]),
                  openai.RateLimitError, "openai")
assert e.status_code == 429 and e.type == "insufficient_quota", e.body
assert int(e.response.headers["retry-after"]) > 0, e.response.headers
print("openai: OK")

# --- anthropic (converted to the OpenAI backend) ------------------------------------------
an = anthropic.Anthropic(base_url=url, api_key=os.environ["AN_KEY"], max_retries=0)
e = until_refused(lambda: an.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]),
                  anthropic.RateLimitError, "anthropic")
assert e.status_code == 429 and e.body["error"]["type"] == "rate_limit_error", e.body
print("anthropic: OK")

# --- boto3 with a Bedrock API key (over the TLS front, as botocore requires) ---------------
os.environ["AWS_BEARER_TOKEN_BEDROCK"] = os.environ["BR_KEY"]
br = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=os.environ["AIGW_TLS_URL"],
                  config=Config(retries={"max_attempts": 1}))
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
e = until_refused(lambda: br.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]),
                  botocore.exceptions.ClientError, "boto3")
assert e.response["Error"]["Code"] == "ThrottlingException", e.response
assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429, e.response
print("boto3: OK")
