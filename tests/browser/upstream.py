"""An upstream MCP server for the web-chat tests, shaped like the first-party servers.

Installed in the gateway as ``lakehouse`` it offers ``search`` (results in the lakehouse's
structured format, with citations) and ``get_document``; installed as ``ingest`` it offers
``ingest_upload``. Every installation also has ``write_note`` (a writing tool: needs approval),
``confirm`` (elicitation), ``ask_model`` (sampling), ``slow`` (progress) and ``html`` (a result full of markup).
Resources: ``docs://lieferbedingungen`` (text), ``docs://logo.png`` (binary), ``docs://evil`` (markup in
its title and text) and the template ``docs://documents/{document_id}`` (a document's text); the prompt
``summarize`` (arguments ``topic``, required, and ``style``, optional).

Run: ``python tests/browser/upstream.py --port P``. The real lakehouse and ingest servers need
a minute to load their embedding model on a small machine; this one starts in about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import Annotated, Any

import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import Field

DOCUMENTS: dict[str, dict[str, Any]] = {
    "doc-rahmenvertrag": {
        "title": "Rahmenvertrag Schraubenlieferung", "source": "rahmenvertrag.pdf",
        "text": ("§ 1 Gegenstand. Der Lieferant liefert Sechskantschrauben M8 nach DIN 933.\n\n"
                 "§ 4 Lieferfristen. Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 Werktagen "
                 "nach Bestellung. Bei Verzug zahlt der Lieferant eine Vertragsstrafe von 0,5 Prozent je Woche.\n\n"
                 "§ 5 Zahlung. Rechnungen sind innerhalb von 30 Tagen ohne Abzug zu zahlen."),
        "page": 2, "section": "§ 4 Lieferfristen",
    },
    "doc-preisliste": {
        "title": "Preisliste 2025", "source": "preisliste_2025.xlsx",
        "text": "Sechskantschraube M8x40, verzinkt: 0,12 EUR je Stück ab 1.000 Stück.",
        "page": None, "section": None, "sheet": "Preise",
    },
    "doc-evil": {
        "title": "<img src=x onerror=alert('title')>Evil", "source": "evil.html",
        "text": "<script>alert('passage')</script> harmless words about screws",
        "page": 1, "section": None,
    },
}


def _hit(document_id: str, needle: str, score: float) -> dict[str, Any]:
    doc = DOCUMENTS[document_id]
    start = max(0, doc["text"].find(needle))
    end = start + len(needle)
    return {"text": needle, "score": score, "chunk_id": f"{document_id}-c1", "domain": "legal",
            "citation": {"document_id": document_id, "title": doc["title"], "source": doc["source"],
                         "page": doc.get("page"), "sheet": doc.get("sheet"), "section": doc.get("section"),
                         "char_start": start, "char_end": end}}


def build(name: str) -> MCPServer:
    server = MCPServer(name)
    ro = types.ToolAnnotations(readOnlyHint=True)

    @server.tool(annotations=ro, structured_output=True)
    def search(query: str, k: int = 10, mode: str = "hybrid", filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Search the documents (lakehouse-style results with citations)."""
        if "evil" in query.lower():
            results = [_hit("doc-evil", DOCUMENTS["doc-evil"]["text"], 0.9)]
        else:
            results = [
                _hit("doc-rahmenvertrag", "Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 "
                                          "Werktagen nach Bestellung.", 0.83),
                _hit("doc-preisliste", DOCUMENTS["doc-preisliste"]["text"], 0.41),
            ]
        return {"query": query, "mode": mode, "results": results[:k]}

    @server.tool(annotations=ro, structured_output=True)
    def get_document(document_id: str, text_offset: int = 0, max_chars: int = 20000) -> dict[str, Any]:
        """Read a document's text (a slice)."""
        doc = DOCUMENTS.get(document_id)
        if doc is None:
            raise ToolError(f"document_id {document_id!r} not found")
        text = doc["text"]
        end = min(len(text), text_offset + max_chars)
        return {"document_id": document_id, "title": doc["title"], "source": doc["source"],
                "text": text[text_offset:end], "text_offset": text_offset, "text_chars": len(text),
                "next_text_offset": end if end < len(text) else None}

    @server.tool()
    def write_note(text: str) -> str:
        """Store a note (a writing tool)."""
        return f"stored: {text}"

    @server.tool(annotations=ro)
    async def confirm(ctx: Context) -> str:
        """Ask the user (elicitation)."""
        result = await ctx.session.elicit_form(
            message="Which colour should the screws have?",
            requested_schema={"type": "object", "properties": {
                "colour": {"type": "string", "enum": ["silber", "schwarz"], "title": "Colour"},
                "count": {"type": "integer", "title": "How many", "minimum": 1},
                "urgent": {"type": "boolean", "title": "Urgent"}}, "required": ["colour", "count"]})
        return f"user answered {result.action} {result.content}"

    @server.tool(annotations=ro)
    async def ask_model(question: str, ctx: Context) -> str:
        """Ask the client's model (sampling)."""
        result = await ctx.session.create_message(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=question))],
            max_tokens=50, system_prompt="Answer in one word.")
        content = result.content
        return f"model said: {getattr(content, 'text', content)}"

    @server.tool(annotations=ro)
    async def slow(ctx: Context, steps: int = 3, delay_s: float = 0.1) -> str:
        """Report progress while working."""
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, f"step {i + 1}")
            await asyncio.sleep(delay_s)
        return f"done after {steps} steps"

    @server.tool(annotations=ro)
    def html() -> str:
        """A result full of markup."""
        return "<script>alert('tool')</script><img src=x onerror=alert('img')><b>bold?</b>"

    # The lakehouse's interaction recording, same names, arguments, results and scope as the real one
    # (servers/lakehouse/server.py); kept in memory per calling user (the gateway's token's subject).
    recorded: dict[str, dict[str, Any]] = {}
    own = {"io.kontor/scope": "interactions"}

    def caller(ctx: Context) -> str:
        import base64 as b64
        import json as js

        header = ctx.request_context.request.headers.get("authorization", "") if ctx.request_context.request else ""
        payload = header.rpartition(" ")[2].split(".")[1] if header.count(".") == 2 else ""
        claims = js.loads(b64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) if payload else {}
        return str(claims.get("sub", ""))

    @server.tool(meta=own, structured_output=True)
    def record_interaction(ctx: Context, question: str, answer: str, tools: list[str],
                           citations: list[dict[str, Any]] | None = None, conversation_id: str | None = None,
                           message_id: str | None = None) -> dict[str, Any]:
        """Record a question and its answer (fixture of the lakehouse tool)."""
        ident = f"i{len(recorded) + 1}"
        recorded[ident] = {"id": ident, "user": caller(ctx), "question": question, "answer": answer, "tools": tools,
                           "feedback": None, "comment": None, "message_id": message_id}
        return {"id": ident, "ts": "2026-01-01T00:00:00Z", "created": True}

    @server.tool(meta=own, structured_output=True)
    def set_interaction_feedback(ctx: Context, interaction_id: str, feedback: int,
                                 comment: str | None = None) -> dict[str, Any]:
        """Rate a recorded interaction (fixture)."""
        row = recorded.get(interaction_id)
        if row is None or row["user"] != caller(ctx):
            raise ToolError("no such interaction")
        row.update(feedback=feedback, comment=comment)
        return {"id": interaction_id, "feedback": feedback, "comment": comment}

    @server.tool(meta=own, annotations=ro, structured_output=True)
    def list_my_interactions(ctx: Context, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """The caller's recorded interactions (fixture)."""
        mine = [r for r in recorded.values() if r["user"] == caller(ctx)]
        return {"interactions": mine[:limit], "total": len(mine), "next_cursor": None}

    @server.tool(meta=own, annotations=types.ToolAnnotations(destructiveHint=True), structured_output=True)
    def delete_my_interactions(ctx: Context, ids: list[str] | None = None, all: bool = False) -> dict[str, Any]:
        """Delete the caller's recorded interactions (fixture)."""
        user = caller(ctx)
        gone = [i for i, r in recorded.items() if r["user"] == user and (all or i in (ids or []))]
        for i in gone:
            del recorded[i]
        return {"deleted": len(gone)}

    @server.tool()
    async def ingest_upload(ctx: Context, name: str, content_base64: str, wait: bool = True) -> dict[str, Any]:
        """Ingest an uploaded file (pretends to; reports progress)."""
        data = base64.b64decode(content_base64, validate=True)
        for step in range(1, 4):
            await ctx.report_progress(step, 3, f"step {step} of 3")
            await asyncio.sleep(0.05)
        return {"job_id": "job-1", "state": "done", "ok": 1, "failed": 0, "skipped": 0,
                "files": [{"name": name, "bytes": len(data), "status": "ok"}]}

    # --- resources and a prompt (the chat's "+" menu: attach a resource, use a prompt)

    @server.resource("docs://lieferbedingungen", name="lieferbedingungen", title="Lieferbedingungen 2025",
                     description="The delivery terms every order follows.", mime_type="text/plain")
    def delivery_terms() -> str:
        return LIEFERBEDINGUNGEN

    @server.resource("docs://logo.png", name="logo", title="Company logo", description="A picture (binary).",
                     mime_type="image/png")
    def logo() -> bytes:
        return LOGO

    @server.resource("docs://evil", name="evil", title="<img src=x onerror=alert('resource')>Evil resource",
                     description="<script>alert('description')</script>", mime_type="text/html")
    def evil_resource() -> str:
        return "<script>alert('resource')</script><b>bold?</b>"

    @server.resource("docs://documents/{document_id}", name="document", title="A document by its id",
                     description="The text of one of the workspace's documents.", mime_type="text/plain")
    def document(document_id: str) -> str:
        doc = DOCUMENTS.get(document_id)
        if doc is None:
            raise ResourceError(f"no document {document_id!r}")
        return doc["text"]

    @server.prompt(title="Summarize a topic", description="Ask for a short summary of a topic in the documents.")
    def summarize(topic: Annotated[str, Field(description="What the summary is about")],
                  style: Annotated[str, Field(description="bullets or prose")] = "bullets") -> str:
        return f"Summarize what our documents say about {topic}. Answer as {style}, and cite your sources."

    return server


#: The text of the resource docs://lieferbedingungen.
LIEFERBEDINGUNGEN = ("Lieferbedingungen 2025. Lieferungen erfolgen frei Haus ab einem Bestellwert von 500 EUR. "
                     "Teillieferungen sind zulässig. Reklamationen innerhalb von 8 Tagen nach Erhalt der Ware.")
LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fixture")
    args = parser.parse_args()
    server = build(args.name)
    from kontor.serving import add_health_route, transport_security

    add_health_route(server)
    app = server.streamable_http_app(transport_security=transport_security("127.0.0.1", args.port))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
