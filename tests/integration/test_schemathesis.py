"""schemathesis against the real app: the whole Runtime (embedded simulator) under uvicorn.

Its CLI reads /openapi.json from the running server and sends generated requests, valid
and invalid (``--mode all``), to every operation, bounded by ``--max-examples`` per
operation and by ``--max-time`` for the run. Any server error, undocumented status code
or content type, or answer that does not fit its documented schema fails the test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.helpers import run_to_end, until
from tests.integration.conftest import ServedApp
from tests.integration.test_api import ADMIN, live, serve_runtime

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 25
# Bounds the whole run (schemathesis stops generating when it is spent) and the wait for it.
MAX_TIME_S = 60
WAIT_S = MAX_TIME_S + 60


def schemathesis_command(base_url: str) -> list[str]:
    executable = Path(sys.executable).with_name("schemathesis")
    return [
        str(executable),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--seed",
        "10",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {ADMIN}",
        "--no-color",
    ]


async def test_schemathesis_finds_no_failure_on_any_route(
    asgi_server: Callable[..., Awaitable[ServedApp]], tmp_path: Path
) -> None:
    # The run is one client sending hundreds of requests: the rate limit would answer most
    # of them with 429 (documented, so conformant) and so leave the routes untested.
    env = {"API_RATE_LIMIT_PER_S": "100000", "API_RATE_LIMIT_BURST": "100000"}
    async with serve_runtime(asgi_server, **env) as (runtime, client):
        await until(live(runtime))
        code, output, _ = await run_to_end(
            schemathesis_command(str(client.base_url).rstrip("/")),
            WAIT_S,
            merge_stderr=True,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1"},
        )
        text = output.decode(errors="replace")
        print(text)  # the summary, for whoever reads the test log
        assert code == 0, text[-6000:]
        # Afterwards every route still answers.
        for path in ("/health", "/api/v1/status", "/api/v1/ticks/latest", "/api/v1/ticks/R_50", "/api/v1/history"):
            assert (await client.get(path)).status_code == 200, path
