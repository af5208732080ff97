"""Official SDKs against streams that break mid-way (issue 8): every client must see the
events that arrived whole, then its SDK's own API error, never a JSON decode or CRC error.
Run by integration-tests/tests/it/streams.rs with AIGW_URL set; prints "<case>: OK" per case."""
import json
import os
import sys

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import openai

URL = os.environ["AIGW_URL"]
failures = []


def case(name):
    def wrap(f):
        try:
            f()
            print(f"{name}: OK")
        except Exception as e:  # noqa: BLE001 - report every case
            failures.append(f"{name}: {type(e).__name__}: {e}")
        return f
    return wrap


def openai_client(prefix):
    return openai.OpenAI(base_url=f"{URL}/{prefix}/v1", api_key="sk-placeholder", max_retries=0)


def chat_stream_raises_api_error(prefix, needle):
    client = openai_client(prefix)
    got = []
    try:
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
        raise AssertionError("the stream ended without an error")
    except openai.APIError as e:
        assert needle in str(e), str(e)
    assert "".join(got) == "Hello", got


@case("openai chat cut mid-line by a stall")
def _():
    chat_stream_raises_api_error("stall", "no data from the upstream")


@case("openai chat cut mid-line by a closed connection")
def _():
    chat_stream_raises_api_error("close", "upstream stream failed")


@case("openai responses with a 2 MiB event")
def _():
    client = openai_client("big")
    events = list(client.responses.create(model="m", input="draw", stream=True))
    assert events[-1].type == "response.completed", [e.type for e in events]
    assert len(events[-1].response.output[0].result) == 2 * 1024 * 1024
    assert events[-1].response.usage.output_tokens == 1056


@case("openai responses cut mid-event")
def _():
    client = openai_client("responses-cut")
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert [e.type for e in events] == ["response.created", "error"], [e.type for e in events]
    assert "before its end marker" in events[-1].message


@case("anthropic converted stream without [DONE]")
def _():
    client = anthropic.Anthropic(base_url=f"{URL}/nodone", api_key="sk-ant-placeholder", max_retries=0)
    text = []
    try:
        with client.messages.stream(model="claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            for t in s.text_stream:
                text.append(t)
        raise AssertionError("the stream ended without an error")
    except anthropic.APIError as e:
        assert "end marker" in str(e), str(e)
    assert "".join(text) == "Hello", text


@case("anthropic native stream cut mid-line")
def _():
    client = anthropic.Anthropic(base_url=f"{URL}/anthropic-cut", api_key="sk-ant-placeholder", max_retries=0)
    try:
        with client.messages.stream(model="claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            for _t in s.text_stream:
                pass
        raise AssertionError("the stream ended without an error")
    except anthropic.APIError as e:
        assert "upstream stream failed" in str(e), str(e)


def bedrock(prefix):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=f"{URL}/{prefix}",
        aws_access_key_id="AKIDPLACEHOLDER",
        aws_secret_access_key="placeholder",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )


def converse_stream_error(prefix):
    resp = bedrock(prefix).converse_stream(modelId="amazon.nova-pro-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    kinds = []
    try:
        for ev in resp["stream"]:
            kinds.extend(ev.keys())
        raise AssertionError(f"no error after {kinds}")
    except botocore.exceptions.EventStreamError as e:
        return kinds, e


@case("boto3 converse-stream cut mid-frame")
def _():
    kinds, e = converse_stream_error("bedrock-cut")
    assert kinds == ["messageStart", "contentBlockDelta"], kinds
    assert e.response["Error"]["Code"] == "internalServerException", e.response


@case("boto3 converse-stream with a corrupt frame")
def _():
    kinds, e = converse_stream_error("bedrock-corrupt")
    assert kinds == ["messageStart"], kinds
    assert e.response["Error"]["Code"] == "internalServerException", e.response
    assert "corrupt" in json.dumps(e.response), e.response


if failures:
    sys.exit("\n".join(failures))
print("broken streams: OK")
