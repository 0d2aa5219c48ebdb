# Types of the compiled module built from _fastpath.c.
from collections.abc import Callable
from typing import Any

class ReadPump:
    acked: int
    sent: int
    @property
    def progressed_at(self) -> float: ...
    @property
    def closed(self) -> bool: ...
    def __init__(
        self,
        *,
        sock: int,
        family: int,
        host: str,
        port: int,
        flowinfo: int,
        scope_id: int,
        content: bytes | memoryview,
        file: int,
        size: int,
        blksize: int,
        last_block: int,
        acked: int,
        sent: int,
        recv_buffer: bytearray,
        fallback: Callable[[int, tuple[object, ...] | None], bool],
    ) -> None: ...
    def __call__(self) -> None: ...
    def close(self) -> None: ...

class Listener:
    def __init__(
        self,
        *,
        sock: int,
        recv_buffer: bytearray,
        pumps: dict[Any, ReadPump],
        sessions: dict[Any, Any],
        fallback: Callable[[int, Any], bool],
    ) -> None: ...
    def __call__(self) -> None: ...
    def close(self) -> None: ...
