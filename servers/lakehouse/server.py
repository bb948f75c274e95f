"""MCP server ``lakehouse``: hybrid search, documents, read-only SQL, statistics and interactions.

The tenant comes from :class:`kontor.auth.ServerAuth`: behind the gateway only from the request's
verified internal token, standalone from the configured tenant context; never from a tool argument.
The search, document, SQL and statistics tools are read-only. Blocking work (LanceDB, Delta,
DuckDB, the embedding model) runs in worker threads so the event loop stays responsive.

**Interactions** (only behind the gateway, where a verified user exists): ``record_interaction``,
``set_interaction_feedback``, ``list_my_interactions`` and ``delete_my_interactions`` keep the
questions, answers, tools used, cited passages and feedback of the host's chats in the tenant's
``interactions`` table, the training data of the tenant's model. The user of a row is ALWAYS the
verified token's subject, never an argument: each user records, sees, rates and deletes only
their own rows, and ``query_table`` shows each caller only their own interactions. The four tools
declare the custom scope ``interactions`` (``_meta["io.kontor/scope"]``), so the gateway lets
only tokens with ``lakehouse:interactions`` see and call them.
"""

# No ``from __future__ import annotations`` here: the tool signatures carry limits taken from
# Settings at build time, and MCPServer evaluates annotations when it builds the schemas.

import re
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from kontor.auth import JwksSource, NoVerifiedToken, server_auth, verified_token_from_request
from kontor.paths import TenantPaths
from kontor.servers.lakehouse.embeddings import Embedder, EmbeddingModelError, get_embedder
from kontor.servers.lakehouse.records import SearchHit
from kontor.servers.lakehouse.store import (
    DOCUMENTS_SCHEMA,
    INTERACTION_ID_PATTERN,
    INTERACTIONS_SCHEMA,
    MAX_ANSWER_CHARS,
    MAX_CITATIONS,
    MAX_COMMENT_CHARS,
    MAX_CURSOR_CHARS,
    MAX_DELETE_IDS,
    MAX_INTERACTION_TOOLS,
    MAX_INTERACTIONS_PAGE,
    MAX_QUESTION_CHARS,
    MAX_TOOL_NAME_CHARS,
    PRODUCTS_SCHEMA,
    LakehouseError,
    LakehouseStore,
    SqlError,
)
from kontor.settings import Settings
from kontor.tenancy import InvalidTenant, NoTenant

MAX_LIST_LIMIT = 200
DEFAULT_TEXT_CHARS = 20_000
MAX_TEXT_CHARS = 200_000
_DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,255}$")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=False)
#: the custom scope of the interactions tools (the gateway requires ``lakehouse:interactions``)
INTERACTIONS_SCOPE = "interactions"
INTERACTIONS_META = {"io.kontor/scope": INTERACTIONS_SCOPE}
INTERACTION_TOOLS = ("record_interaction", "set_interaction_feedback", "list_my_interactions",
                     "delete_my_interactions")


# -- output models ----------------------------------------------------------------------------

FilterValue = str | list[str]


class SearchFilters(BaseModel):
    """Optional restrictions of a search; every given filter must match."""

    model_config = ConfigDict(extra="forbid")

    domain: FilterValue | None = Field(None, description="tax, legal, product or general (or a list)")
    document_id: FilterValue | None = Field(None, description="only chunks of these documents")
    source_prefix: FilterValue | None = Field(None, description="source path starts with this, e.g. 'contracts/'")
    kind: FilterValue | None = Field(None, description="chunk kind: paragraph, table, list, product ...")
    mime: FilterValue | None = Field(None, description="document MIME type, e.g. application/pdf")


class Citation(BaseModel):
    document_id: str
    title: str
    source: str
    page: int | None
    sheet: str | None
    section: str | None
    char_start: int = Field(description="offset of the chunk in the document text")
    char_end: int


class SearchResult(BaseModel):
    text: str
    score: float = Field(description="RRF score (hybrid), cosine similarity (vector) or BM25 (keyword)")
    citation: Citation
    matched: list[Literal["identifier", "vector", "keyword"]] = Field(
        description="which searches found this chunk; identifier matches are listed first")
    chunk_id: str
    domain: str


class SearchResponse(BaseModel):
    query: str
    mode: Literal["hybrid", "vector", "keyword"]
    results: list[SearchResult]


class DocumentResponse(BaseModel):
    document_id: str
    title: str
    source: str
    mime: str
    domain: str
    domain_cues: list[str]
    pages: int | None
    parent_id: str | None
    children: list[str] = Field(description="documents extracted from this one (attachments, archive members)")
    size_bytes: int
    content_sha256: str
    ingested_at: str
    metadata: dict[str, Any]
    text: str = Field(description="the requested slice of the document text")
    text_offset: int
    text_chars: int = Field(description="length of the whole document text")
    next_text_offset: int | None = Field(description="offset of the rest of the text, null at the end")


class DocumentSummary(BaseModel):
    document_id: str
    title: str
    source: str
    mime: str
    domain: str
    pages: int | None
    parent_id: str | None
    size_bytes: int | None
    chunk_count: int | None
    ingested_at: str | None


class DocumentPage(BaseModel):
    documents: list[DocumentSummary]
    total: int
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page, null on the last page")


class TableResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool = Field(description="true when more rows matched than max_rows")
    max_rows: int


class TableStats(BaseModel):
    rows: int
    version: int


class IndexCoverage(BaseModel):
    indexed: int
    unindexed: int
    index: str | None
    fraction: float | None = None
    note: str | None = None


class StatsResponse(BaseModel):
    tenant: str
    embedding_model: str
    embedding_dim: int
    tables: dict[str, TableStats]
    documents_per_domain: dict[str, int]
    index_coverage: dict[str, IndexCoverage]
    vocabulary_words: int


InteractionId = Annotated[str, Field(min_length=1, max_length=128, pattern=INTERACTION_ID_PATTERN,
                                     description="an interaction id (from record_interaction or list_my_interactions)")]
OptionalRef = Annotated[str | None, Field(max_length=128, pattern=INTERACTION_ID_PATTERN)]


class CitedPassage(BaseModel):
    """A passage the answer cited (as search returned it); unknown keys, e.g. the passage text, are dropped."""

    model_config = ConfigDict(extra="ignore")

    document_id: str = Field(min_length=1, max_length=256)
    title: str | None = Field(None, max_length=500)
    source: str | None = Field(None, max_length=1000)
    page: int | None = Field(None, ge=0)
    sheet: str | None = Field(None, max_length=200)
    section: str | None = Field(None, max_length=1000)
    char_start: int | None = Field(None, ge=0)
    char_end: int | None = Field(None, ge=0)
    chunk_id: str | None = Field(None, max_length=256)
    number: int | None = Field(None, ge=0, le=10_000, description="the [n] the answer cites it by")
    score: float | None = None


class RecordedInteraction(BaseModel):
    id: str
    ts: str
    created: bool = Field(description="false when this message had been recorded before (nothing was written)")


class InteractionFeedback(BaseModel):
    id: str
    feedback: int | None
    comment: str | None


class RecordedItem(BaseModel):
    id: str
    ts: str | None
    question: str
    answer: str
    tools: list[Any]
    citations: list[Any]
    feedback: int | None
    comment: str | None
    conversation_id: str | None
    message_id: str | None


class InteractionPage(BaseModel):
    interactions: list[RecordedItem]
    total: int = Field(description="how many interactions of the caller are recorded")
    next_cursor: str | None = Field(description="pass as cursor for the next (older) page; null on the last page")


class DeletedInteractions(BaseModel):
    deleted: int


# -- service ----------------------------------------------------------------------------------

class LakehouseService:
    """Per-process state: the embedding model (loaded lazily, once) and one store per tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._stores: dict[str, LakehouseStore] = {}
        self._embedder: Embedder | None = None

    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = get_embedder(self.settings.embedding_model, self.settings.embedding_device,
                                                  self.settings.embedding_batch_size)
        return self._embedder

    def store(self, tenant: str) -> LakehouseStore:
        store = self._stores.get(tenant)
        if store is not None:
            return store
        spec = self.embedder().spec
        with self._lock:
            store = self._stores.get(tenant)
            if store is None:
                store = LakehouseStore(TenantPaths(self.settings.data_root, tenant), spec)
                self._stores[tenant] = store
        return store

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


def _tenant_of(source: Callable[[], str]) -> Callable[[], str]:
    """``source()`` (the request's tenant) with a missing tenant turned into a tool error."""

    def tenant() -> str:
        try:
            return source()
        except NoTenant:
            raise ToolError("no tenant is set for this request; the server must run for a tenant") from None

    return tenant


def _subject() -> str:
    """The verified user of this request (the internal token's subject); a tool error without one."""
    try:
        return verified_token_from_request().subject
    except NoVerifiedToken:
        raise ToolError("interactions are recorded per user: this needs a verified user (run behind the "
                        "gateway)") from None


async def _run(fn: Any, *args: Any) -> Any:
    """Run blocking ``fn`` in a worker thread, turning anticipated errors into tool errors."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except (ValueError, SqlError, LakehouseError, EmbeddingModelError, InvalidTenant) as exc:
        raise ToolError(str(exc)) from exc


def _result(hit: SearchHit) -> SearchResult:
    return SearchResult(text=hit.text, score=hit.score, citation=Citation(**hit.citation()),
                        matched=hit.matched, chunk_id=hit.chunk_id, domain=hit.domain)


def _columns(schema: Any) -> str:
    return ", ".join(f.name for f in schema)


def build_server(settings: Settings, *, jwks: JwksSource | None = None) -> MCPServer:
    """The ``lakehouse`` MCP server for ``settings`` (transport and startup are the caller's).

    With ``KONTOR_AUTH_JWKS_URL`` set it runs behind the gateway (see :func:`kontor.auth.server_auth`;
    ``jwks`` replaces the HTTP JWKS source, for tests).
    """
    service = LakehouseService(settings)
    auth = server_auth(settings, jwks)
    _tenant = _tenant_of(auth.tenant)
    server = MCPServer(
        name="lakehouse",
        title="Kontor lakehouse",
        description="Search and read the tenant's documents, products and interactions.",
        instructions=(
            "Use `search` to find passages (German-aware keyword + semantic search; part numbers, "
            "GTINs and ETIM/ECLASS codes match exactly) and cite results by their citation. Use "
            "`get_document` for the full text, `list_documents` to browse, `query_table` for SQL "
            "aggregates over documents/products/interactions, and `stats` for what is stored."
        ),
        **auth.mcp_kwargs(),
    )
    max_k = settings.max_search_k
    max_chars = settings.max_query_chars

    @server.tool(
        name="search",
        title="Search documents",
        description=(
            "Search the tenant's documents. mode 'hybrid' (default) fuses semantic and keyword search "
            "(reciprocal-rank fusion), 'vector' is semantic only, 'keyword' is BM25 over German-aware terms "
            "(umlauts folded, stems, compound words split). Chunks whose identifiers (GTIN/EAN, part numbers, "
            "ETIM/ECLASS codes) appear in the query are listed first. Optional filters: domain, document_id, "
            "source_prefix, kind, mime. Each result has a citation with document, page/sheet and offsets."
        ),
        annotations=READ_ONLY,
        structured_output=True,
    )
    async def search(
        query: Annotated[str, Field(min_length=1, max_length=max_chars, description="what to look for")],
        k: Annotated[int, Field(ge=1, le=max_k, description=f"number of results, 1-{max_k}")] = 10,
        mode: Annotated[Literal["hybrid", "vector", "keyword"], Field(description="search mode")] = "hybrid",
        filters: Annotated[SearchFilters | None, Field(description="optional restrictions")] = None,
    ) -> SearchResponse:
        if not query.strip():
            raise ToolError("query must not be blank")
        tenant = _tenant()
        filter_dict = filters.model_dump(exclude_none=True) if filters is not None else None

        def work() -> list[SearchHit]:
            store = service.store(tenant)
            vector = service.embedder().encode_one(query) if mode != "keyword" else None
            return store.search(query, vector, k=k, mode=mode, filters=filter_dict or None)

        hits = await _run(work)
        return SearchResponse(query=query, mode=mode, results=[_result(h) for h in hits])

    @server.tool(
        name="get_document",
        title="Get document",
        description=(
            "Read one document: metadata, the documents extracted from it, and its text. Long texts come in "
            "slices: pass text_offset (and max_chars) to continue where next_text_offset points."
        ),
        annotations=READ_ONLY,
        structured_output=True,
    )
    async def get_document(
        document_id: Annotated[str, Field(min_length=1, max_length=256, description="id from search or list")],
        text_offset: Annotated[int, Field(ge=0, description="first character of the text slice")] = 0,
        max_chars: Annotated[int, Field(ge=1, le=MAX_TEXT_CHARS, description="length of the text slice")]
        = DEFAULT_TEXT_CHARS,
    ) -> DocumentResponse:
        if not _DOCUMENT_ID.match(document_id):
            raise ToolError(f"document_id {document_id!r} is not a valid document id")
        tenant = _tenant()

        def work() -> tuple[Any, list[str]]:
            store = service.store(tenant)
            return store.get_document(document_id), store.children_of(document_id)

        doc, children = await _run(work)
        if doc is None:
            raise ToolError(f"document_id {document_id!r} not found")
        total = len(doc.text)
        end = min(total, text_offset + max_chars)
        return DocumentResponse(
            document_id=doc.document_id, title=doc.title, source=doc.source, mime=doc.mime, domain=doc.domain,
            domain_cues=doc.domain_cues, pages=doc.pages, parent_id=doc.parent_id, children=children,
            size_bytes=doc.size_bytes, content_sha256=doc.content_sha256, ingested_at=doc.ingested_at,
            metadata=doc.metadata, text=doc.text[text_offset:end], text_offset=text_offset, text_chars=total,
            next_text_offset=end if end < total else None,
        )

    @server.tool(
        name="list_documents",
        title="List documents",
        description="Page through the tenant's documents, newest first, optionally of one domain.",
        annotations=READ_ONLY,
        structured_output=True,
    )
    async def list_documents(
        offset: Annotated[int, Field(ge=0, description="documents to skip")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT, description=f"page size, 1-{MAX_LIST_LIMIT}")] = 50,
        domain: Annotated[Literal["tax", "legal", "product", "general"] | None,
                          Field(description="only documents of this domain")] = None,
    ) -> DocumentPage:
        tenant = _tenant()
        rows, total = await _run(lambda: service.store(tenant).list_documents(offset, limit, domain))
        docs = [DocumentSummary(**{name: row.get(name) for name in DocumentSummary.model_fields}) for row in rows]
        next_offset = offset + len(docs) if offset + len(docs) < total else None
        return DocumentPage(documents=docs, total=total, offset=offset, limit=limit, next_offset=next_offset)

    @server.tool(
        name="query_table",
        title="Query tables with SQL",
        description=(
            "Run one read-only SQL SELECT (DuckDB dialect) over the tenant's tables. "
            f"documents({_columns(DOCUMENTS_SCHEMA)}); products({_columns(PRODUCTS_SCHEMA)}); "
            f"interactions({_columns(INTERACTIONS_SCHEMA)}; behind the gateway only the caller's own rows). "
            f"At most {settings.sql_max_rows} rows are returned (truncated=true when more matched); queries "
            f"stop after {settings.sql_timeout_seconds:g} s. Files, other databases and settings are off limits."
        ),
        annotations=READ_ONLY,
        structured_output=True,
    )
    async def query_table(
        sql: Annotated[str, Field(min_length=1, max_length=20_000, description="one SELECT statement")],
    ) -> TableResult:
        tenant = _tenant()
        # Behind the gateway a caller sees only their own interactions (other users' questions are theirs).
        user = _subject() if auth.behind_gateway else None
        result = await _run(lambda: service.store(tenant).query_sql(
            sql, settings.sql_max_rows, settings.sql_timeout_seconds, interactions_user=user))
        return TableResult(max_rows=settings.sql_max_rows, **result)

    @server.tool(
        name="stats",
        title="Lakehouse statistics",
        description="Row counts, documents per domain, index coverage, embedding model and table versions.",
        annotations=READ_ONLY,
        structured_output=True,
    )
    async def stats() -> StatsResponse:
        tenant = _tenant()
        data = await _run(lambda: service.store(tenant).stats())
        return StatsResponse(
            tenant=data["tenant"], embedding_model=data["embedding"]["model"],
            embedding_dim=data["embedding"]["dim"], tables=data["tables"],
            documents_per_domain=data["documents_per_domain"], index_coverage=data["index_coverage"],
            vocabulary_words=data["vocabulary_words"],
        )

    @server.resource(
        "lakehouse://documents/{document_id}",
        name="document",
        title="Document text",
        description="A document's text, preceded by its metadata (title, source, domain, MIME type, pages).",
        mime_type="text/plain",
    )
    async def document_resource(document_id: str) -> str:
        if not _DOCUMENT_ID.match(document_id):
            raise ResourceNotFoundError(f"document_id {document_id!r} is not a valid document id")
        try:
            tenant = auth.tenant()
        except NoTenant:
            raise ResourceError("no tenant is set for this request") from None
        try:
            doc = await anyio.to_thread.run_sync(lambda: service.store(tenant).get_document(document_id))
        except (ValueError, LakehouseError) as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        if doc is None:
            raise ResourceNotFoundError(f"document {document_id!r} not found")
        header = [f"title: {doc.title}", f"source: {doc.source}", f"document_id: {doc.document_id}",
                  f"domain: {doc.domain}", f"mime: {doc.mime}"]
        if doc.pages is not None:
            header.append(f"pages: {doc.pages}")
        if doc.parent_id:
            header.append(f"parent_id: {doc.parent_id}")
        return "\n".join(header) + "\n---\n" + doc.text

    if auth.behind_gateway:  # standalone there is no verified user to record interactions for
        _interaction_tools(server, service, _tenant)
    return server


def _interaction_tools(server: MCPServer, service: LakehouseService, tenant_of: Callable[[], str]) -> None:
    """The four interactions tools (scope ``lakehouse:interactions``; the user is always the token's subject)."""

    @server.tool(
        name="record_interaction",
        title="Record a question and its answer",
        description=(
            "Record one question of the calling user, the answer given, the tools used and the passages cited, in "
            "the tenant's interactions table (training data for the tenant's model). The user is the caller, never "
            "an argument. Pass conversation_id and message_id to make a retry safe: the same message is recorded "
            "once. Returns the interaction id, which set_interaction_feedback takes."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                    open_world_hint=False),
        meta=INTERACTIONS_META,
        structured_output=True,
    )
    async def record_interaction(
        question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="the user's question")],
        answer: Annotated[str, Field(max_length=MAX_ANSWER_CHARS, description="the answer as shown to the user")],
        tools: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_TOOL_NAME_CHARS)]],
                         Field(max_length=MAX_INTERACTION_TOOLS, description="names of the tools used for the answer")],
        citations: Annotated[list[CitedPassage] | None,
                             Field(max_length=MAX_CITATIONS, description="the passages the answer cites")] = None,
        conversation_id: Annotated[OptionalRef, Field(description="the host's conversation id")] = None,
        message_id: Annotated[OptionalRef, Field(description="the host's id of the answer message")] = None,
    ) -> RecordedInteraction:
        if not question.strip():
            raise ToolError("question must not be blank")
        user, tenant = _subject(), tenant_of()
        cited = [c.model_dump(exclude_none=True) for c in citations or []]
        interaction_id, created, when = await _run(lambda: service.store(tenant).record_interaction_once(
            question, answer, user=user, tools=list(tools), citations=cited, conversation_id=conversation_id,
            message_id=message_id))
        return RecordedInteraction(id=interaction_id, ts=when.isoformat(), created=created)

    @server.tool(
        name="set_interaction_feedback",
        title="Rate a recorded answer",
        description=(
            "Set the calling user's feedback on one of their recorded interactions: -1 bad, 0 neutral, 1 good, "
            "with an optional comment (replaces earlier feedback). Only the caller's own interactions can be rated."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                                    open_world_hint=False),
        meta=INTERACTIONS_META,
        structured_output=True,
    )
    async def set_interaction_feedback(
        interaction_id: InteractionId,
        feedback: Annotated[Literal[-1, 0, 1], Field(description="-1 bad, 0 neutral, 1 good")],
        comment: Annotated[str | None, Field(max_length=MAX_COMMENT_CHARS, description="optional comment")] = None,
    ) -> InteractionFeedback:
        user, tenant = _subject(), tenant_of()
        text = comment if comment and comment.strip() else None
        found = await _run(lambda: service.store(tenant).set_interaction_feedback(user, interaction_id, feedback, text))
        if not found:
            raise ToolError(f"no interaction {interaction_id!r} of yours is recorded")
        return InteractionFeedback(id=interaction_id, feedback=feedback, comment=text)

    @server.tool(
        name="list_my_interactions",
        title="List my recorded interactions",
        description=(
            "Page through what is recorded about the calling user: their questions, the answers, tools, cited "
            "passages and feedback, newest first. Other users' interactions are never shown."
        ),
        annotations=READ_ONLY,
        meta=INTERACTIONS_META,
        structured_output=True,
    )
    async def list_my_interactions(
        limit: Annotated[int, Field(ge=1, le=MAX_INTERACTIONS_PAGE,
                                    description=f"page size, 1-{MAX_INTERACTIONS_PAGE}")] = 20,
        cursor: Annotated[str | None, Field(max_length=MAX_CURSOR_CHARS,
                                            description="next_cursor of the previous page")] = None,
    ) -> InteractionPage:
        user, tenant = _subject(), tenant_of()
        rows, total, next_cursor = await _run(lambda: service.store(tenant).list_interactions(user, limit, cursor))
        return InteractionPage(interactions=[RecordedItem(**row) for row in rows], total=total,
                               next_cursor=next_cursor)

    @server.tool(
        name="delete_my_interactions",
        title="Delete my recorded interactions",
        description=(
            "Delete interactions recorded about the calling user: the given ids (ids of other users' interactions "
            "are ignored), or all of them with all=true. The rows are removed from the table and from its older "
            "versions on disk. Returns how many were deleted."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                    open_world_hint=False),
        meta=INTERACTIONS_META,
        structured_output=True,
    )
    async def delete_my_interactions(
        ids: Annotated[list[InteractionId] | None,
                       Field(max_length=MAX_DELETE_IDS, description="interaction ids to delete")] = None,
        all: Annotated[bool, Field(description="delete every interaction recorded about you")] = False,
    ) -> DeletedInteractions:
        if all == (ids is not None):
            raise ToolError("pass either ids (a list of interaction ids) or all=true, not both or neither")
        user, tenant = _subject(), tenant_of()
        deleted = await _run(lambda: service.store(tenant).delete_interactions(user, None if all else list(ids or [])))
        return DeletedInteractions(deleted=deleted)
