"""schemathesis, driven by /admin/openapi.json, throws generated calls at the admin API."""

import asyncio
import shutil
import sys
from pathlib import Path

from tests.test_rollout_e2e import SHORT_PLAN


async def run_schemathesis(url: str, *extra: str) -> tuple[int, str]:
    executable = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    process = await asyncio.create_subprocess_exec(
        executable, "run", url, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "40", "--seed", "1", "--request-timeout", "5", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    return process.returncode, out.decode()


async def test_generated_admin_calls_find_no_server_error_and_match_the_schema(upstreams, make_proxy, tmp_path):
    proxy = await make_proxy(rollout={**SHORT_PLAN, "start": "manual"}, admin={"token": "tok"},
                             state={"path": str(tmp_path / "state.json")})
    url = f"http://127.0.0.1:{proxy.admin_port}/admin/openapi.json"
    for headers in ((), ("-H", "Authorization: Bearer tok")):
        code, output = await run_schemathesis(url, *headers)
        assert code == 0, output
        assert "No issues found" in output or "passed" in output.lower(), output
