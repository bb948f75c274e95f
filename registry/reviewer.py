"""The production review function of the registry: :func:`kontor.registry.review.run_review` fed from the store.

:class:`~kontor.registry.service.RegistryService` takes ``review(server_json, publisher_namespaces)``;
:func:`registry_review` builds it over a :class:`~kontor.registry.store.RegistryStore`, so every run
compares the submission with what the catalog holds *now*:

* ``first_party_tools`` — the tool names of the approved first-party servers (gateway name → names),
  taken from their approved snapshots, plus :data:`FIRST_PARTY_FALLBACK` for any first-party
  server not seeded yet (the shadowing check must never run against an empty first-party list);
* ``catalog_tools`` / ``catalog_servers`` — every other approved server (public and private: a
  private server's tool names are still names a tenant's model may confuse), except the server
  under review itself;
* ``gateway_name`` — the slug the store gave the server (the scopes in the report use it).

``config`` is the :class:`~kontor.registry.review.ReviewConfig`: the production defaults unless a
caller (a test) passes its own clients and transports. Keep one config per registry: its
ownership checker holds the replay guard of signed challenges.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kontor.registry.review import ReviewConfig, ReviewOutcome, run_review
from kontor.registry.service import ReviewFn
from kontor.registry.store import NotFound, RegistryStore

__all__ = ["FIRST_PARTY_FALLBACK", "catalog_names", "registry_review"]

log = logging.getLogger(__name__)

#: First-party tool names used until the first-party servers are seeded (kept in step by a test of the seed).
FIRST_PARTY_FALLBACK: dict[str, list[str]] = {
    "lakehouse": ["search", "get_document", "list_documents", "query_table", "stats"],
    "ingest": ["ingest_files", "ingest_upload", "job_status", "cancel_job"],
}


async def catalog_names(store: RegistryStore, *, exclude_server: str | None = None
                        ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(first_party_tools, catalog_tools)`` from the approved snapshots in the store.

    ``first_party_tools`` maps a first-party server's gateway name to its tool names;
    ``catalog_tools`` maps every other approved server's ``server.json`` name to its tool names.
    """
    first_party: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    for entry in await store.catalog(None, include_private=True):
        if exclude_server is not None and entry.server.name.lower() == exclude_server.lower():
            continue
        try:
            names = [t.tool_name for t in await store.approved_snapshot(entry.latest.id)]
        except NotFound:
            names = []
        if entry.server.first_party:
            first_party[entry.server.slug] = names
        else:
            others[entry.server.name] = names
    for slug, names in FIRST_PARTY_FALLBACK.items():
        first_party.setdefault(slug, list(names))
    return first_party, others


def registry_review(store: RegistryStore, config: ReviewConfig | None = None) -> ReviewFn:
    """The ``review`` callable of :class:`~kontor.registry.service.RegistryService` for ``store``."""
    config = config or ReviewConfig()

    async def review(server_json: Mapping[str, Any], publisher_namespaces: list[str]) -> ReviewOutcome:
        name = server_json.get("name") if isinstance(server_json, Mapping) else None
        name = name if isinstance(name, str) else None
        first_party, others = await catalog_names(store, exclude_server=name)
        found = await store.find_server(name) if name else None
        return await run_review(dict(server_json), publisher_namespaces=publisher_namespaces,
                                first_party_tools=first_party, catalog_tools=others,
                                catalog_servers=list(others), config=config,
                                gateway_name=found.slug if found is not None else None)

    return review
