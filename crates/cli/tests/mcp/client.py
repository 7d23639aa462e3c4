"""A real MCP client (the Python SDK's) driving `nightshift mcp` over stdio, as an interactive
agent would: it lists the tools, starts a task, follows it to its end, reads its log and its
diff, and tries what must fail. It prints what it saw as one JSON object for the Rust test to
check.

Usage: client.py NIGHTSHIFT_BINARY REPO   (the server's environment as JSON in NS_ENV)
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client


def text_of(result):
    return "".join(block.text for block in result.content if getattr(block, "text", None))


async def main():
    binary, repo = sys.argv[1], sys.argv[2]
    params = StdioServerParameters(
        command=binary, args=["mcp"], env=json.loads(os.environ["NS_ENV"])
    )
    seen = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            seen["version"] = init.server_info.version
            seen["instructions"] = init.instructions or ""
            tools = await session.list_tools()
            seen["tools"] = sorted(tool.name for tool in tools.tools)
            seen["start_schema"] = next(
                tool.input_schema for tool in tools.tools if tool.name == "start_task"
            )

            started = await session.call_tool(
                "start_task", {"repo": repo, "prompt": "Fix add", "model": "openai:m"}
            )
            seen["start_error"] = bool(started.is_error)
            task = json.loads(text_of(started))["task"]
            seen["started"] = task
            task_id = task["short_id"]

            # Follow it to its end, as an agent would: status, then the log page by page.
            for _ in range(600):
                status = json.loads(text_of(await session.call_tool("task_status", {"id": task_id})))
                if status["state"] in ("succeeded", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.1)
            seen["status"] = status

            pages, since, log = 0, 0, ""
            while True:
                page = text_of(await session.call_tool("task_logs", {"id": task_id, "since": since}))
                body, _, tail = page.rpartition("\n{")
                meta = json.loads("{" + tail)
                log += body
                pages += 1
                if meta["next_since"] == since or meta["ended"]:
                    break
                since = meta["next_since"]
            seen["log"] = log
            seen["log_ended"] = meta["ended"]

            diff = await session.call_tool("task_diff", {"id": task_id})
            seen["diff"] = text_of(diff)

            empty = await session.call_tool("send_message", {"id": task_id, "message": " "})
            seen["empty_message"] = {"error": bool(empty.is_error), "text": text_of(empty)}
            cancel = await session.call_tool("cancel_task", {"id": task_id})
            seen["cancel"] = text_of(cancel)
            missing = await session.call_tool("task_status", {"id": "zzzzzzzz"})
            seen["missing"] = {"error": bool(missing.is_error), "text": text_of(missing)}
    print(json.dumps(seen))


asyncio.run(main())
