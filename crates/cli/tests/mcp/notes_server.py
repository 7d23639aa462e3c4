"""A small MCP server written with the official Python SDK, run by nightshift inside a task's
sandbox as a repository's `[mcp.NAME]` stdio server. Its tools report where they run, so the
test can tell the sandbox from the host."""

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")


@server.tool()
def lookup(term: str) -> str:
    """Look a term up in the repository's NOTES.md."""
    with open("NOTES.md") as notes:
        for line in notes:
            if line.startswith(term + ":"):
                found = line.strip()
                break
        else:
            found = f"{term}: not found"
    marker = os.environ.get("HOST_MARKER", "")
    host_visible = bool(marker) and os.path.exists(marker)
    return (
        f"{found} | cwd={os.getcwd()} user={os.environ.get('USER')} "
        f"token={os.environ.get('NOTES_TOKEN', '-')} host_file_visible={host_visible}"
    )


@server.tool()
def crash() -> str:
    """Ends the server in the middle of the call."""
    sys.stderr.write("notes: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def slow(seconds: int = 60) -> str:
    """Takes longer than any test's call timeout."""
    time.sleep(seconds)
    return "too late"


@server.tool()
def forbidden() -> str:
    """A tool the repository excludes."""
    return "this must never run"


if __name__ == "__main__":
    server.run("stdio")
