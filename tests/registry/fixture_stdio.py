"""A dependency-free stdio MCP server for the sandbox tests (runs under any python3, even with -I -S).

``python fixture_stdio.py MODE [ARG]``:

* ``ok`` — a well-behaved server: three tools over two ``tools/list`` pages (one with an
  annotation field the SDK does not know, to prove the snapshot hashes the raw definition),
  a prompt, a resource, a template; its instructions are a JSON report of what the sandbox
  looks like from inside (uid, cwd, HOME, environment names, rlimits);
* ``net PORT`` — tries to reach 127.0.0.1:PORT (a listener the test started on the host), a
  public address and DNS before answering, and reports each outcome in its instructions;
* ``probe PORT`` — only the network attempts, printed as JSON (the unsandboxed control);
* ``hang`` — reads requests and never answers, and ignores stdin closing and SIGTERM;
* ``hog`` — allocates 1 GiB when asked to initialize;
* ``flood`` — answers initialize with a single line of 64 MiB;
* ``exit`` — writes to stderr and exits with code 3.
"""

from __future__ import annotations

import json
import os
import socket
import sys

TOOLS = [
    {"name": "echo", "title": "Echo", "description": "Return the text unchanged. Grüße — “quotes”.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
     "annotations": {"readOnlyHint": True, "x-vendorHint": "kept by the raw snapshot"}},
    {"name": "add", "description": "Add two numbers.",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
     "outputSchema": {"type": "object", "properties": {"sum": {"type": "number"}}},
     "annotations": {"readOnlyHint": True, "idempotentHint": True}},
    {"name": "delete_note", "title": "Delete a note", "description": "Delete a stored note.",
     "inputSchema": {"type": "object", "properties": {"id": {"type": "integer"}}},
     "annotations": {"destructiveHint": True}, "_meta": {"not": "pinned"}},
]


def network_attempts(port: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for label, address in (("host_loopback", ("127.0.0.1", port)), ("internet", ("1.1.1.1", 53))):
        try:
            with socket.create_connection(address, timeout=2):
                out[label] = "connected"
        except OSError as exc:
            out[label] = f"failed: {exc}"
    try:
        socket.getaddrinfo("example.com", 443)
        out["dns"] = "resolved"
    except OSError as exc:
        out["dns"] = f"failed: {exc}"
    return out


def inside_report() -> dict[str, object]:
    import resource

    limits = {name: resource.getrlimit(getattr(resource, name))[0]
              for name in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CPU")}
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
            "home": os.environ.get("HOME"), "env": sorted(os.environ), "rlimits": limits, "pid": os.getpid()}


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(mode: str, instructions: str | None) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if "id" not in request:
            continue  # a notification
        method, rid = request.get("method"), request["id"]
        params = request.get("params") or {}
        if mode == "hang":
            continue
        if method == "initialize":
            if mode == "hog":
                hoard = bytearray(1024 * 1024 * 1024)
                hoard[0] = 1
            if mode == "flood":
                sys.stdout.write("x" * (64 * 1024 * 1024))
                sys.stdout.flush()
            result: dict[str, object] = {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {"listChanged": True}, "prompts": {}, "resources": {}},
                "serverInfo": {"name": "fixture-stdio", "version": "1.0.0"}}
            if instructions is not None:
                result["instructions"] = instructions
            send({"jsonrpc": "2.0", "id": rid, "result": result})
        elif method == "tools/list":
            if params.get("cursor") == "page-2":
                send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS[2:]}})
            else:
                send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS[:2], "nextCursor": "page-2"}})
        elif method == "prompts/list":
            prompt = {"name": "greet", "description": "Greet someone.",
                      "arguments": [{"name": "name", "required": True}]}
            send({"jsonrpc": "2.0", "id": rid, "result": {"prompts": [prompt]}})
        elif method == "resources/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"resources": [
                {"uri": "fixture://readme", "name": "readme", "mimeType": "text/plain"}]}})
        elif method == "resources/templates/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"resourceTemplates": [
                {"uriTemplate": "fixture://notes/{id}", "name": "note"}]}})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}})
    if mode == "hang":  # stdin closed: keep hanging, and ignore polite requests to stop
        import signal
        import time

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)


def main() -> None:
    mode = sys.argv[1]
    if mode == "probe":
        print(json.dumps(network_attempts(int(sys.argv[2]))))
        return
    if mode == "exit":
        sys.stderr.write("fixture: giving up on purpose\n")
        sys.exit(3)
    instructions = None
    if mode == "ok":
        instructions = json.dumps(inside_report())
    elif mode == "net":
        instructions = json.dumps(network_attempts(int(sys.argv[2])))
    serve(mode, instructions)


if __name__ == "__main__":
    main()
