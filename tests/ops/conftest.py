"""Operators' tests: the product watched by real tools, on the fault suite's throwaway servers.

    python -m pytest -m slow tests/ops
"""  # fmt: skip  # else ruff format unindents the example above

# The throwaway PostgreSQL and Redis and the product's processes, as the fault scenarios use them.
from tests.fault.conftest import database_url, make_stack, pg_server, redis_server  # noqa: F401
