"""The conformance suite's server scenarios through the gateway: everything that passes directly must pass.

The suite cannot send a bearer token, so it talks to :mod:`tests.conformance.auth_proxy`, which adds
a valid user token; the fixture server is installed for the tenant unprefixed (``{"prefix": false}``)
because the scenarios call tools, prompts and resources by fixed names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import runner
from tests.conformance.auth_proxy import auth_proxy
from tests.conformance.conftest import everything_server
from tests.gateway.mesh import mesh

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_scenarios_passing_directly_pass_through_the_gateway(tmp_path: Path, server_scenarios: list[str]) -> None:
    with everything_server(tmp_path) as upstream, mesh(tmp_path / "mesh", KONTOR_GATEWAY_RATE_USER_PER_S="1000",
                                                        KONTOR_GATEWAY_RATE_USER_BURST="1000") as m:
        direct = runner.run_scenarios(upstream, server_scenarios, timeout_s=60)
        m.run(m.setup_tenant("conf", {"everything": upstream}, config={"prefix": False}))
        m.start_gateway()
        token = m.token("conf", "conformance", ["everything:read", "everything:write"])
        with auth_proxy(m.url("conf"), token) as proxy_url:
            through = runner.run_scenarios(proxy_url, server_scenarios, timeout_s=90)
    lost = [f"{name}: {through[name].detail}" for name, result in sorted(direct.items())
            if result.passed and not through[name].passed]
    assert not lost, "passes directly but not through the gateway:\n" + "\n".join(lost) + \
        f"\n\nthrough the gateway:\n{runner.summary(through)}"
    assert sum(r.passed for r in through.values()) >= len(server_scenarios) - 1
