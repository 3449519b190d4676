"""docs/clients.md, run: every ```python and ```js block on the page, as written but for the gateway's
port, against the live gateway (Python behind the offline guard, JavaScript under node with the pinned
npm `openai`). The blocks print what their users would look at; the checks here read that output."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.clients.conftest import REPO, Live, require_node_openai, run_guarded_python
from tests.clients.offline_guard import MARK

pytestmark = pytest.mark.llama
DOC = REPO / "docs" / "clients.md"
DOC_BASE_URL = "http://127.0.0.1:8000/v1"


def blocks(language: str) -> list[str]:
    found = re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    assert found, f"no {language} blocks in {DOC}"
    return found


@pytest.fixture(scope="module")
def doc_key(live: Live) -> str:
    return live.key("docs-reader")


def test_python_blocks_run_as_written(live, doc_key):
    sources = [b.replace(DOC_BASE_URL, live.base_url) for b in blocks("python")]
    assert all(live.base_url in s for s in sources)  # each block names the gateway it talks to
    runner = (f"import os\nos.environ['BASIS_API_KEY'] = {doc_key!r}\n"
              f"for i, source in enumerate({json.dumps(sources)}):\n"
              "    print(f'--- block {i}', flush=True)\n"
              "    exec(compile(source, f'docs/clients.md python block {i}', 'exec'), {'__name__': '__main__'})\n")
    proc = run_guarded_python(runner, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert MARK not in proc.stderr, proc.stderr[-4000:]
    out = re.split(r"^--- block \d+\n", proc.stdout, flags=re.M)[1:]
    assert len(out) == len(sources) and all(o.strip() for o in out), proc.stdout
    openai_py, _async, litellm_py, langchain, logprobs = out
    assert "400 unsupported_parameter tool_choice" in openai_py and "401 invalid_api_key" in openai_py
    assert "name=" in openai_py and "CompletionUsage(" in openai_py  # the parsed City and the usage
    assert "\n401\n" in litellm_py and "Usage(" in litellm_py
    assert "401 invalid_api_key" in langchain and "'name': 'City'" in langchain
    *per_token, from_litellm, from_langchain = logprobs.strip().splitlines()
    assert per_token and float(from_litellm) <= 0 and float(from_langchain) <= 0


def test_js_blocks_run_as_written(live, doc_key):
    node = require_node_openai()
    chat_block, logprobs_block = blocks("js")
    for i, (source, expected) in enumerate([(chat_block, ("401 invalid_api_key", "prompt_tokens")),
                                            (logprobs_block, ('"token_logprobs":[-', '"top_logprobs":[{'))]):
        # Evaluated as an ES module from the repository root: `import "openai"` resolves to node_modules there.
        proc = subprocess.run([node, "--input-type=module", "-e", source.replace(DOC_BASE_URL, live.base_url)],
                              cwd=REPO, env={**os.environ, "BASIS_API_KEY": doc_key}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (i, proc.stderr[-4000:])
        assert all(e in proc.stdout for e in expected), (i, proc.stdout)
