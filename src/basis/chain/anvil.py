"""Start and stop a real anvil (Foundry's local chain) on a free loopback port.

Used by the tests and by ``basis up``. The binary is node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
(``npm ci``). State persists across restarts only with ``state_path`` (anvil writes it on a clean
stop and every ``state_interval`` seconds); after an unclean stop the chain can be behind the ledger.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from basis.chain.paths import foundry_binary
from basis.lifeline import pre_exec_die_with_parent


class AnvilError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.loads(resp.read())
    if "error" in data:
        raise AnvilError(f"{method}: {data['error']}")
    return data["result"]


@dataclass
class Anvil:
    """``with Anvil() as chain: chain.rpc_url, chain.keys[0]`` — a fresh local chain."""

    chain_id: int = 31337
    port: int | None = None
    host: str = "127.0.0.1"
    accounts: int = 10
    balance_eth: int = 10_000
    state_path: Path | None = None
    state_interval: int | None = None
    block_time: int | None = None
    extra_args: list[str] = field(default_factory=list)
    startup_timeout: float = 15.0
    die_with_parent: bool = False  # interrupted (state written) when the starting process exits
    # Where anvil.log and anvil.json go. None: a temporary folder, removed on stop. A long-lived chain
    # (`basis up`) keeps them in its home: the operator can read the log, and a SIGKILLed parent
    # leaves nothing behind in /tmp.
    log_dir: Path | None = None

    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    keys: list[str] = field(default_factory=list, init=False)
    addresses: list[str] = field(default_factory=list, init=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Anvil:
        if self.process is not None:
            raise AnvilError("already started")
        binary = foundry_binary("anvil")
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="basis-anvil-")
            folder = Path(self._tmp.name)
        else:
            folder = Path(self.log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            if (folder / "anvil.log").exists():  # the previous run's log (maybe of a crash) is kept once
                (folder / "anvil.log").replace(folder / "anvil.log.1")
        config_out = folder / "anvil.json"
        config_out.unlink(missing_ok=True)  # readiness waits for this run's own config
        log = open(folder / "anvil.log", "wb")  # noqa: SIM115 - lives as long as the process
        last_error = ""
        for _attempt in range(3):  # a picked free port can be taken before anvil binds it
            port = self.port or free_port(self.host)
            args = [
                str(binary),
                "--host",
                self.host,
                "--port",
                str(port),
                "--chain-id",
                str(self.chain_id),
                "--accounts",
                str(self.accounts),
                "--balance",
                str(self.balance_eth),
                "--config-out",
                str(config_out),
            ]
            if self.state_path is not None:
                args += ["--state", str(self.state_path)]
                if self.state_interval is not None:
                    args += ["--state-interval", str(self.state_interval)]
            if self.block_time is not None:
                args += ["--block-time", str(self.block_time)]
            args += self.extra_args
            pre_exec = pre_exec_die_with_parent(signal.SIGINT) if self.die_with_parent else None
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=pre_exec)  # only prctl and getppid run there
            self.port = port
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    if (
                        int(str(_rpc(self.rpc_url, "eth_chainId")), 16) == self.chain_id
                        and config_out.is_file()
                    ):
                        self.process = proc
                        self._log = log
                        cfg = json.loads(config_out.read_text())
                        self.keys = list(cfg.get("private_keys", []))
                        self.addresses = list(cfg.get("available_accounts", []))
                        return self
                except (OSError, urllib.error.URLError, ValueError, AnvilError):
                    pass
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.flush()
            last_error = (folder / "anvil.log").read_text(errors="replace")[-2000:]
            if self.port is not None and _attempt < 2:
                self.port = None if "Address already in use" in last_error else self.port
        log.close()
        raise AnvilError(f"anvil did not start: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Clean stop (SIGINT), so anvil writes --state; kill only if it hangs."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def rpc(self, method: str, params: list | None = None) -> object:
        return _rpc(self.rpc_url, method, params)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leak an anvil process
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
