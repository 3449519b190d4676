"""Never a 5xx from bad input (#15 item 7): schemathesis fuzzes every HTTP route from the gateway's
own OpenAPI schema, over real HTTP on loopback, with a real key, on a gateway that follows a real
chain (so the settlement and withdrawal routes are live) and has a worker (so chats are served).

The explorer pages are left out of the published schema; here every route is described (the
schema FastAPI would publish if all were public), so they are fuzzed too, and so is any route
added later. Bounded: a few examples an operation, a few hundred in all.
"""

from __future__ import annotations

import copy

import pytest
import schemathesis
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from hypothesis import HealthCheck, settings
from schemathesis.generation.hypothesis.builder import HypothesisTestConfig, HypothesisTestMode, create_test
from web3 import Web3

from basis.chain.deploy import deploy
from basis.gateway.runtime import GatewayOptions
from tests.conftest import require_foundry
from tests.gateway.harness import Gateway

pytestmark = pytest.mark.chain
EXAMPLES_PER_OPERATION = 20


def every_route_schema(app) -> dict:
    routes = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and not context.path.startswith(("/docs", "/redoc", "/openapi")):
            route = copy.copy(route)
            route.include_in_schema = True
            route.path, route.path_format = context.path, context.path_format
            routes.append(route)
    schema = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version, routes=routes)
    return far_ends(schema)


WIRE_LIMIT = 2**64  # past any store's integer (SQLite and PostgreSQL stop at 2**63 - 1)


def far_ends(node):
    """Give every integer the schema leaves unbounded a far end at WIRE_LIMIT, so the coverage phase
    probes it (and one past it): a client may send any number of digits, and an unbounded integer
    is exactly where a store's 64-bit range breaks (random draws rarely go that far)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("maximum", WIRE_LIMIT)
            node.setdefault("minimum", -WIRE_LIMIT)
        for value in node.values():
            far_ends(value)
    elif isinstance(node, list):
        for value in node:
            far_ends(value)
    return node


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, anvil):
    require_foundry()
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir()
    (home / "operator.key").write_text(anvil.keys[1] + "\n")
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    deploy(w3, anvil.keys[0], operator=Web3.to_checksum_address(anvil.addresses[1]),
           manifest_path=home / "deployment.json", mint_to_deployer=10**24)
    gw = Gateway(home, GatewayOptions(heartbeat_interval=1.0), rpc_url=anvil.rpc_url)
    try:
        gw.start_worker(capacity=4)
        _, key = gw.account("fuzz", 10**21)
        yield gw, key
    finally:
        gw.close()


def test_no_input_gets_a_5xx(fuzzed):
    gw, key = fuzzed
    schema = schemathesis.openapi.from_dict(every_route_schema(gw.server.config.app))
    headers = {"Authorization": f"Bearer {key}"}
    failures, operations, examples = [], 0, [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        def no_5xx(case) -> None:
            examples[0] += 1
            sent = {**headers, **(case.headers or {})}
            response = case.call(base_url=gw.base, headers=sent, timeout=30)
            assert response.status_code < 500, (
                f"{response.status_code} from {case.as_curl_command(headers=sent)}\n{response.text[:300]}")

        # schemathesis's pytest plugin does not run under pytest 9 (it reads a private attribute that
        # is gone), so build its test per operation as the plugin does: the schema's examples, the
        # coverage phase (boundary values: the far ends of integer ranges, lengths just past a limit),
        # then random fuzzing of valid and invalid inputs.
        test = create_test(operation=operation, test_func=no_5xx, config=HypothesisTestConfig(
            project=schema.config, modes=list(HypothesisTestMode),
            settings=settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                              database=None, suppress_health_check=list(HealthCheck))))
        try:
            test()
        except AssertionError as exc:
            failures.append(f"{operation.label}: {exc}")
    print(f"fuzzed {operations} operations with {examples[0]} requests")
    assert operations >= 25 and examples[0] >= 250
    assert not failures, "\n\n".join(failures)
