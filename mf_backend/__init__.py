"""MotionFollower backend: score-guided video motion editing (ICCV 2025), as a library, CLI and JSON-RPC server."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "1.0"
