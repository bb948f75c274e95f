"""Every call whose answer reached the client is in the audit log, even if the gateway is killed right after."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from kontor.gateway.audit import AuditLog
from tests.gateway.mesh import mesh

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_audit_record_survives_kill_9_right_after_the_response(tmp_path: Path) -> None:
    with mesh(tmp_path / "mesh") as m:
        fix = m.start_upstream("fix")
        await m.setup_tenant("acme", {"fix": fix})
        m.start_gateway()
        audit_db = m.settings.data_dir / "audit" / "audit.db"  # (the mesh's data root, read while it is current)
        answered = []
        async with m.client("acme", m.token("acme", "durable", ["fix:read"])) as client:
            for i in range(5):
                result = await client.call_tool("fix__echo", {"text": f"call {i}"})
                answered.append(result.content[0].text)
            assert m.gateway is not None
            m.gateway.send_signal(signal.SIGKILL)  # no shutdown, no flush
            m.gateway.wait(10)
    assert answered == [f"call {i}" for i in range(5)]
    log = AuditLog(audit_db)
    await log.init(check_anchor=False)
    try:
        mine = [r for r in await log.query(tenant="acme", subject="durable") if r.kind == "tools/call"]
        assert len(mine) == 5
        assert all(r.decision == "allowed" and r.status == "ok" for r in mine)
        assert (await log.verify()).ok
    finally:
        await log.close()
