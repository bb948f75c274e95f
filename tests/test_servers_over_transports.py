"""Both data-plane servers as real processes, over stdio and Streamable HTTP, with the official mcp client."""

from __future__ import annotations

import base64
from pathlib import Path

from mcp import Client, StdioServerParameters

from tests import samples
from tests.servers_util import http_server, serve_command, server_env


def _stdio(name: str, env: dict[str, str]) -> StdioServerParameters:
    cmd = serve_command(name)
    return StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)


async def test_ingest_over_stdio_then_search_over_http(tmp_path: Path):
    folder = tmp_path / "import"
    samples.text_corpus(folder, 40, words=(4, 10), paragraphs=(1, 2))
    (folder / "vertrag.pdf").write_bytes(samples.pdf_bytes(["Kündigungsfrist drei Monate", "Haftung nach BGB"]))
    env = server_env(tmp_path / "data", "acme", KONTOR_IMPORT_ROOTS=str(folder))

    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with Client(_stdio("ingest", env)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"ingest_files", "ingest_upload", "job_status", "cancel_job"} <= set(tools)
        assert tools["job_status"].annotations.read_only_hint is True
        assert tools["ingest_files"].annotations.read_only_hint is False
        result = await client.call_tool("ingest_files", {"paths": [str(folder)]}, progress_callback=on_progress)
        assert not result.is_error, result.content
        report = result.structured_content
        assert report["state"] == "completed" and report["ok"] == 41 and report["failed"] == 0
        assert progress and progress[-1][0] == progress[-1][1] == 41

        outside = await client.call_tool("ingest_files", {"paths": ["/etc/passwd"]})
        assert outside.is_error and "outside the allowed import roots" in outside.content[0].text

    with http_server("lakehouse", env) as (url, _):
        async with Client(url) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["search"].annotations.read_only_hint is True
            assert tools["search"].output_schema
            result = await client.call_tool("search", {"query": "Kündigungsfrist", "k": 3})
            assert not result.is_error, result.content
            top = result.structured_content["results"][0]
            assert top["citation"]["source"].endswith("vertrag.pdf") and top["citation"]["page"] == 1
            bad = await client.call_tool("search", {"query": "x", "k": 100000})
            assert bad.is_error and "k" in bad.content[0].text


async def test_upload_over_http_then_search_over_stdio(tmp_path: Path):
    env = server_env(tmp_path / "data", "acme")
    content = base64.b64encode("# Schaltschrank\n\nDie Edelstahlschraube M8 hält die Tür.\n".encode()).decode()
    with http_server("ingest", env) as (url, _):
        async with Client(url) as client:
            result = await client.call_tool("ingest_upload", {"name": "tuer.md", "content_base64": content})
            assert not result.is_error, result.content
            assert result.structured_content["ok"] == 1
            job = result.structured_content["job_id"]
            status = await client.call_tool("job_status", {"job_id": job})
            assert status.structured_content["state"] == "completed"
            bad = await client.call_tool("ingest_upload", {"name": "x.md", "content_base64": "!!not base64!!"})
            assert bad.is_error and "content_base64" in bad.content[0].text

    async with Client(_stdio("lakehouse", env)) as client:
        result = await client.call_tool("search", {"query": "Schraube aus Edelstahl", "k": 3, "mode": "keyword"})
        assert not result.is_error, result.content
        assert result.structured_content["results"][0]["citation"]["source"] == "tuer.md"
