"""The client SDKs make no connection beyond the gateway: CI reaches package registries only, so a
fetch at import or on a call (LiteLLM's cost map from GitHub, a tiktoken encoding) would fail or hang
there. Each run here is a fresh interpreter behind tests/clients/offline_guard.py, which refuses and
reports any outside lookup or connection; with conftest.OFFLINE_ENV set, there must be none."""

from __future__ import annotations

import pytest

from tests.clients.conftest import Live, run_guarded_python
from tests.clients.offline_guard import MARK

pytestmark = pytest.mark.llama

CLIENTS = """
import asyncio, json
import litellm
from langchain_openai import ChatOpenAI
from openai import OpenAI
from pydantic import BaseModel, Field

class City(BaseModel):
    name: str = Field(max_length=16)
    country: str = Field(max_length=16)

base, key = {base!r}, {key!r}
hi = [{{"role": "user", "content": "Say hi"}}]
args = dict(model="openai/basis-default", api_base=base, api_key=key, max_tokens=6)
seen = {{}}
seen["litellm"] = litellm.completion(messages=hi, **args).usage.completion_tokens
# Without include_usage LiteLLM counts the streamed tokens itself (tiktoken, from its bundled cache).
chunks = list(litellm.completion(messages=hi, stream=True, **args))
seen["litellm_counted"] = litellm.stream_chunk_builder(chunks, messages=hi).usage.completion_tokens
seen["litellm_async"] = asyncio.run(litellm.acompletion(messages=hi, **args)).usage.completion_tokens
seen["litellm_schema"] = City.model_validate_json(litellm.completion(
    messages=hi, response_format=City, temperature=0, **{{**args, "max_tokens": 100}}).choices[0].message.content).name
llm = ChatOpenAI(model="basis-default", base_url=base, api_key=key, max_tokens=6, stream_usage=True)
seen["langchain"] = llm.invoke("Say hi").usage_metadata["output_tokens"]
seen["langchain_stream"] = sum(c.usage_metadata["output_tokens"] for c in llm.stream("hi") if c.usage_metadata)
strict = ChatOpenAI(model="basis-default", base_url=base, api_key=key, max_tokens=100, temperature=0)
seen["langchain_schema"] = strict.with_structured_output(City, method="json_schema").invoke("Paris").name
seen["openai"] = OpenAI(base_url=base, api_key=key).chat.completions.create(
    model="basis-default", messages=hi, max_tokens=6).usage.completion_tokens
print(json.dumps(seen))
"""


def test_the_guard_refuses_and_reports_an_outside_connection():
    proc = run_guarded_python("import socket\ntry:\n socket.create_connection(('example.com', 443), timeout=5)\n"
                              "except OSError as e:\n print('refused', e)\n")
    assert proc.returncode == 0 and proc.stdout.startswith("refused")
    assert f"{MARK} lookup of 'example.com'" in proc.stderr


def test_litellm_langchain_and_openai_run_offline(live: Live):
    import json

    proc = run_guarded_python(CLIENTS.format(base=live.base_url, key=live.api_key))
    assert MARK not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(seen[k] > 0 for k in seen if not k.endswith("schema")), seen
    assert all(isinstance(seen[k], str) for k in ("litellm_schema", "langchain_schema")), seen
