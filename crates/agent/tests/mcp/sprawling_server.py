"""An MCP server that speaks the protocol by hand (JSON-RPC over its standard streams) the way a
hostile or careless one might: its tool list never ends, repeats a name, has a name with a
terminal escape, a description of 100 KB holding a secret, and a schema of 100 KB. With the
argument `mute` it answers nothing, with `linger` it stays on after its input has closed (as a
server that ignores it would), with `small` it lists three tools and no more pages (its tool
`time` takes a minute to answer), with `huge` its tool list is one 5 MiB message, and with `pid FILE` it writes its process id to FILE first.
Only the standard library, so any python3 runs it."""

import json
import os
import sys

args = sys.argv[1:]
if len(args) >= 2 and args[0] == "pid":
    with open(args[1], "w") as out:
        out.write(str(os.getpid()))
    args = args[2:]
mute = "mute" in args
linger = "linger" in args
small = "small" in args
huge = "huge" in args


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def tool(name, description="a tool", schema=None):
    return {
        "name": name,
        "description": description,
        "inputSchema": schema or {"type": "object", "properties": {}},
    }


def page(number):
    tools = [tool(f"t{number:02}_{i:03}") for i in range(100)]
    if number == 0:
        tools += [
            tool("dup"),
            tool("dup", "the same name again"),
            tool("bad\u001b[31mname"),
            tool("long_desc", "uses SECRET-abc123 " + "x" * 100_000),
            tool(
                "big_schema",
                schema={
                    "type": "object",
                    "properties": {f"p{i}": {"type": "string"} for i in range(4000)},
                },
            ),
        ]
    return tools


for line in sys.stdin:
    if mute:
        continue
    request = json.loads(line)
    if "id" not in request:
        continue
    method, ident = request["method"], request["id"]
    if method == "initialize":
        result = {
            "protocolVersion": request["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "sprawling", "version": "1"},
        }
    elif method == "tools/list":
        number = int((request.get("params") or {}).get("cursor") or 0)
        if huge:
            result = {"tools": [tool("big", "y" * (5 << 20))]}
        elif small:
            result = {"tools": [tool("echo"), tool("ping"), tool("time")]}
        else:
            result = {"tools": page(number), "nextCursor": str(number + 1)}
    elif method == "tools/call":
        name = request["params"]["name"]
        if small and name == "time":
            import time

            time.sleep(60)
        result = {"content": [{"type": "text", "text": f"called {name}"}]}
    else:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": method}})
        continue
    send({"jsonrpc": "2.0", "id": ident, "result": result})

if linger:
    import time

    while True:
        time.sleep(60)
