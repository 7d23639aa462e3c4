"""A remote MCP server written with the official Python SDK: streamable HTTP over HTTPS on the
host's loopback, which nightshift reaches through a task's egress proxy. Every request must
carry an Authorization header (the proxy adds it from a `proxy` secret); each one seen is
appended to a log file, so the test can tell what the server received.

Usage: remote_server.py CERT_PEM KEY_PEM HEADER_LOG [sse]. With `sse`, it serves the older
HTTP+SSE transport at /sse instead of streamable HTTP at /mcp. It prints the port it listens
on."""

import socket
import sys

import uvicorn
from starlette.responses import PlainTextResponse

from mcp.server.mcpserver import MCPServer

cert, key, header_log = sys.argv[1:4]
sse = sys.argv[4:] == ["sse"]
server = MCPServer("remote")
seen = {"authorization": ""}


@server.tool()
def whoami() -> str:
    """Says which Authorization header the last request carried."""
    return f"you sent {seen['authorization']}"


app = server.sse_app() if sse else server.streamable_http_app()


async def require_authorization(scope, receive, send):
    if scope["type"] == "http":
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode()
        with open(header_log, "a") as log:
            log.write(authorization + "\n")
        if not authorization:
            await PlainTextResponse("no Authorization header", status_code=401)(scope, receive, send)
            return
        seen["authorization"] = authorization
    await app(scope, receive, send)


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
config = uvicorn.Config(
    require_authorization,
    ssl_certfile=cert,
    ssl_keyfile=key,
    log_level="warning",
    lifespan="on",
)
uvicorn.Server(config).run(sockets=[listener])
