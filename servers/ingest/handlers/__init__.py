"""Format handlers: bytes in, a :class:`~kontor.servers.ingest.model.ParsedDocument` out."""
