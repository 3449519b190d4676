"""Stands in for ``python -m sglang.launch_server`` in tests (sglang needs CUDA): serves the
protocol double on the requested host/port with the requested API key, and records its argv."""

from __future__ import annotations

import argparse
import json
import os
import sys

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.engines.sglang_double import Behaviour, build_app


def main() -> None:
    argv = [a for a in sys.argv[1:] if a not in ("-m", "sglang.launch_server")]
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key")
    p.add_argument("--incremental-streaming-output", action="store_true")
    p.add_argument("--enable-deterministic-inference", action="store_true")
    args = p.parse_args(argv)
    with open(os.environ["FAKE_SGLANG_ARGV"], "w") as f:
        json.dump(sys.argv[1:], f)
    beh = Behaviour.for_version("0.5.10", incremental=args.incremental_streaming_output,
                                deterministic=args.enable_deterministic_inference, api_key=args.api_key)
    eos = int(os.environ.get("FAKE_SGLANG_EOS", "1"))  # the binding's end of sequence, set by the test
    app = build_app([300, 301, 302, eos], eos_id=eos, behaviour=beh, starting=2)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
