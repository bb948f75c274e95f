"""MCP server ``ingest``: object store, format handlers, chunking, embeddings, ingestion jobs."""
