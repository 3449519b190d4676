"""Children started with ``pre_exec_die_with_parent`` obey their stop signal even when the parent
was started with it ignored (a shell's background job starts with SIGINT ignored, and exec keeps
an ignored signal ignored): `basis up &` must still be able to stop its anvil with SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap


def test_a_child_obeys_sigint_though_its_parent_ignores_it():
    script = textwrap.dedent("""
        import os, signal, subprocess, sys
        from basis.lifeline import pre_exec_die_with_parent
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a shell starts
        plain = subprocess.Popen(["sleep", "60"])
        armed = subprocess.Popen(["sleep", "60"], preexec_fn=pre_exec_die_with_parent(signal.SIGINT))
        for p in (plain, armed):
            os.kill(p.pid, signal.SIGINT)
        try:
            plain.wait(1)
            print("plain stopped")
        except subprocess.TimeoutExpired:
            print("plain ignored SIGINT")
            plain.kill()
        print("armed", armed.wait(10))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "plain ignored SIGINT" in out.stdout  # what an unarmed child would do: the case is real
    assert f"armed {-signal.SIGINT}" in out.stdout, out.stdout
