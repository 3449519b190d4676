"""What an sglang server is, and whether the adapter can read it correctly (the version gate).

Facts read from sglang's own source, release by release (wheels 0.4.6.post5 to 0.5.23,
``srt/managers/tokenizer_manager.py``, ``schedule_batch.py``, ``sampling/sampling_params.py``,
``entrypoints/http_server.py``):

* before 0.5.1, streamed chunks carry no ``output_ids`` (the ids are lost: an empty completion);
* 0.5.1-0.5.4: the first chunk also carries up to 5 trailing *prompt* ids
  (``INIT_INCREMENTAL_DETOKENIZATION_OFFSET``), and streamed ids are deltas of which only the
  last queued chunk is sent (ids lost under load); ``sampling_seed`` is a TypeError up to 0.5.2;
* 0.5.5: streamed ids are always deltas, only the last queued chunk is sent (ids lost);
* 0.5.6-0.5.9: cumulative by default (correct); ``--stream-output`` makes ids deltas with the
  same loss;
* 0.5.10 on: cumulative by default, or ``--incremental-streaming-output`` (``--stream-output`` is
  its deprecated alias) where queued deltas are merged, never dropped: both correct.

So the adapter supports 0.5.6 and later in cumulative mode, and 0.5.10 and later in incremental
mode, and refuses anything else before its first job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from basis.engines.base import EngineError

log = logging.getLogger("basis.engines.sglang")

MIN_VERSION = (0, 5, 6)  # cumulative streaming reads every id; pyproject's `sglang` extra pins the same
MIN_INCREMENTAL_VERSION = (0, 5, 10)  # incremental streaming merges queued deltas instead of dropping them
MIN_VERSION_TEXT = ".".join(map(str, MIN_VERSION))
MIN_INCREMENTAL_TEXT = ".".join(map(str, MIN_INCREMENTAL_VERSION))

# Every sampling key the adapter sends itself (so a server's --preferred-sampling-params cannot
# change it). Keys a server prefers outside this set would alter sampling unasked: refused.
OVERRIDDEN_SAMPLING_KEYS = frozenset({
    "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "min_new_tokens", "n", "ignore_eos", "stop", "stop_regex", "stop_token_ids",
    "json_schema", "regex", "ebnf", "structural_tag", "sampling_seed",
})
# Keys that change only sglang's own text (the adapter rebuilds text from ids) or chunking.
HARMLESS_PREFERRED_KEYS = frozenset({
    "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "stream_interval",
})

_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.?post(\d+))?")


def parse_version(text: str) -> tuple[int, int, int, int]:
    """'0.5.10' -> (0, 5, 10, 0); '0.4.6.post5' -> (0, 4, 6, 5); '0.5.23rc1' -> (0, 5, 23, 0)."""
    m = _VERSION_RE.match(str(text))
    if not m:
        raise EngineError(f"sglang reported an unreadable version {text!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0), int(m[4] or 0)


@dataclass(frozen=True)
class ServerInfo:
    """What the adapter needs to know about a running server (from ``/server_info``,
    ``/get_server_info`` or, failing both, ``/version``)."""

    version: str
    incremental: bool | None  # None: the server did not say (``/version`` only)
    deterministic: bool
    preferred_sampling_params: Mapping = field(default_factory=dict)
    source: str = ""

    @property
    def version_tuple(self) -> tuple[int, int, int, int]:
        return parse_version(self.version)


def _flag(info: Mapping, *names: str) -> bool | None:
    for name in names:
        if name in info:
            return bool(info[name])
    return None


def server_info_from(body: Mapping, source: str) -> ServerInfo:
    if not isinstance(body, Mapping) or not body.get("version"):
        raise EngineError(f"sglang {source} did not report a version")
    version = str(body["version"])
    if source == "/version":
        return ServerInfo(version=version, incremental=None, deterministic=False, source=source)
    # 0.5.10 renamed --stream-output to --incremental-streaming-output.
    incremental = _flag(body, "incremental_streaming_output", "stream_output")
    preferred = body.get("preferred_sampling_params") or {}
    if isinstance(preferred, str):  # older servers report the raw JSON string of the flag
        import json

        try:
            preferred = json.loads(preferred)
        except ValueError as exc:
            raise EngineError(f"sglang reports unreadable preferred_sampling_params: {preferred[:200]!r}") from exc
    return ServerInfo(
        version=version,
        incremental=bool(incremental) if incremental is not None else False,
        deterministic=bool(_flag(body, "enable_deterministic_inference")),
        preferred_sampling_params=dict(preferred),
        source=source,
    )


def check_supported(info: ServerInfo) -> None:
    """Refuse a server whose stream the adapter cannot read correctly (EngineError, naming why)."""
    v = info.version_tuple[:3]
    if v < MIN_VERSION:
        raise EngineError(
            f"sglang {info.version} is not supported: its streamed token ids are lost or mixed with prompt ids; "
            f"the minimum is sglang {MIN_VERSION_TEXT} (cumulative streaming) or {MIN_INCREMENTAL_TEXT} "
            f"(--incremental-streaming-output)"
        )
    if info.incremental and v < MIN_INCREMENTAL_VERSION:
        raise EngineError(
            f"sglang {info.version} runs with --stream-output, which drops queued token ids under load; "
            f"restart it without --stream-output, or use sglang {MIN_INCREMENTAL_TEXT} or later"
        )
    unknown = sorted(set(info.preferred_sampling_params) - OVERRIDDEN_SAMPLING_KEYS - HARMLESS_PREFERRED_KEYS)
    if unknown:
        raise EngineError(
            f"sglang runs with --preferred-sampling-params setting {', '.join(unknown)}, which would change "
            "every job's sampling unasked; restart it without them"
        )


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def fetch_server_info(client: httpx.AsyncClient, base_url: str, api_key: str | None,
                            timeout: httpx.Timeout | float = 30.0) -> ServerInfo:
    """Ask the server what it is: ``/server_info`` (0.5.10+), ``/get_server_info``, then ``/version``."""
    statuses = []
    for path in ("/server_info", "/get_server_info", "/version"):
        try:
            resp = await client.get(f"{base_url}{path}", headers=auth_headers(api_key), timeout=timeout)
        except httpx.HTTPError as exc:
            raise EngineError(f"sglang at {base_url} did not answer {path}: {exc}") from exc
        if resp.status_code == 401:
            raise EngineError(f"sglang at {base_url} refused the API key (401 on {path}): set --sglang-api-key")
        if resp.status_code == 200:
            try:
                body = resp.json()
            except ValueError as exc:
                raise EngineError(f"sglang {path} answered non-JSON: {resp.text[:200]!r}") from exc
            return server_info_from(body, path)
        statuses.append(f"{path} {resp.status_code}")
    raise EngineError(f"sglang at {base_url} reported no version ({', '.join(statuses)})")


async def wait_healthy(client: httpx.AsyncClient, base_url: str, timeout: float,
                       process: subprocess.Popen | None = None) -> None:
    """Poll ``GET /health`` until 200: sglang answers 503 (or refuses connections) while it loads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while True:
        if process is not None and process.poll() is not None:
            raise EngineError(f"sglang exited with code {process.returncode} during startup")
        try:
            r = await client.get(f"{base_url}/health", timeout=5.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if loop.time() > deadline:
            raise EngineError(f"sglang at {base_url} did not become healthy within {timeout:.0f}s (last: {last})")
        await asyncio.sleep(min(2.0, max(0.05, timeout / 50)))


# -- running sglang ourselves (GPU hosts) ------------------------------------------------------

def installed_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def sglang_available() -> tuple[bool, str]:
    """(True, "") when sglang is installed and a CUDA GPU is visible, else (False, reason)."""
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        return False, "sglang not installed"
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0 or "GPU" not in r.stdout:
            return False, "no GPU"
    except (OSError, subprocess.TimeoutExpired):
        return False, "no GPU (nvidia-smi not found)"
    return True, ""


def launch_command(model_path: str, *, port: int, host: str, api_key: str, version: str | None,
                   deterministic: bool = False, extra_args: Sequence[str] = (),
                   python: str | None = None) -> list[str]:
    """The flags the adapter needs: loopback only, an API key, incremental streaming where it is
    safe (0.5.10+; cumulative otherwise, which resends every id in every chunk), and deterministic
    inference only on request (it makes ``sampling_seed`` honoured, at a throughput cost)."""
    cmd = [python or sys.executable, "-m", "sglang.launch_server", "--model-path", model_path,
           "--host", host, "--port", str(port), "--api-key", api_key]
    if version is not None and parse_version(version)[:3] >= MIN_INCREMENTAL_VERSION:
        cmd.append("--incremental-streaming-output")
    if deterministic:
        cmd.append("--enable-deterministic-inference")
    cmd.extend(extra_args)
    return cmd


async def launch_server(
    model_path: str,
    *,
    port: int = 30000,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    deterministic: bool = False,
    startup_timeout: float = 900.0,
    python: str | None = None,
) -> tuple[subprocess.Popen, str, str]:
    """Start ``python -m sglang.launch_server`` and wait until ``GET /health`` answers 200.

    Returns (process, base_url, api_key). Only works where sglang is installed (CUDA hosts); the
    installed version is gated before anything starts.
    """
    ok, reason = sglang_available()
    if not ok:
        raise EngineError(f"cannot launch sglang: {reason}")
    version = installed_version()
    if version is not None and parse_version(version)[:3] < MIN_VERSION:
        raise EngineError(f"installed sglang {version} is not supported; the minimum is sglang {MIN_VERSION_TEXT}")
    api_key = secrets.token_hex(24)  # hex: a urlsafe key may begin with "-", which argparse takes for an option
    cmd = launch_command(model_path, port=port, host=host, api_key=api_key, version=version,
                         deterministic=deterministic, extra_args=extra_args, python=python)
    log.info("starting sglang %s: %s", version, " ".join(c if c != api_key else "***" for c in cmd))
    # logprobs before temperature (the model's own), as protocol v3 reports them (SGLangEngine)
    proc = subprocess.Popen(cmd, env={**os.environ, "SGLANG_RETURN_ORIGINAL_LOGPROB": "1"})
    url = f"http://{host}:{port}"
    try:
        async with httpx.AsyncClient() as client:
            await wait_healthy(client, url, startup_timeout, process=proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url, api_key


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
