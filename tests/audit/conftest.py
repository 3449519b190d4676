from tests.settlement.conftest import env  # noqa: F401  (a deployment, a real ledger and its views)
