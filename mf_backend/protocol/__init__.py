"""Newline-delimited JSON-RPC 2.0 over stdin/stdout (the convention of MCP's stdio transport).

See docs/protocol.md for the messages. `lines` reads and writes lines, `server` dispatches them,
`queue_job` is the `queue` method (a queue of shots on Ray).
"""

from mf_backend.protocol.server import Server, serve

__all__ = ["Server", "serve"]
