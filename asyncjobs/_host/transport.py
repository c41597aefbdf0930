"""Frames over an anyio byte stream: the one part of the wire format that needs an event loop.

``wire`` holds the bytes (``encode_frame``, ``FrameDecoder``) and imports no anyio, so the store
and the command line's fast path can use the wire's tables without paying for an event loop.
"""

from __future__ import annotations

from typing import Any, final

import anyio
from anyio.abc import ByteStream

from .._core.errors import ProtocolError
from .wire import CHUNK, MAX_FRAME, FrameDecoder, encode_frame


@final
class FrameStream:
    """Frames over an anyio byte stream (a Unix socket, an SSH channel, ...).

    ``send`` may be called from many tasks at once (each frame goes out whole, in one write);
    ``receive`` from one task at a time. ``receive`` is safe to cancel: bytes read stay buffered.
    A send that is cancelled (or fails) midway may have cut a frame short, so every later send
    raises ``anyio.BrokenResourceError``: close the connection.
    """

    __slots__ = ("_decoder", "_send_lock", "_torn", "stream")

    def __init__(self, stream: ByteStream, *, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame=max_frame)
        self._send_lock = anyio.Lock()
        self._torn = False

    @property
    def max_frame(self) -> int:
        return self._decoder.max_frame

    async def send(self, obj: dict[str, Any]) -> None:
        """Send one frame holding ``obj``; a frame that is too big raises ``ProtocolError``."""
        frame = encode_frame(obj, max_frame=self.max_frame)
        async with self._send_lock:
            if self._torn:
                raise anyio.BrokenResourceError(
                    "an earlier send was cut short; this connection can't be written further"
                )
            try:
                await self.stream.send(frame)
            except BaseException:
                self._torn = True
                raise

    async def receive(self) -> dict[str, Any]:
        """The next frame; ``anyio.EndOfStream`` when the peer closed between frames."""
        decoder = self._decoder
        while (frame := decoder.next_frame()) is None:
            try:
                data = await self.stream.receive(max(CHUNK, decoder.missing))
            except anyio.EndOfStream:
                if decoder.buffered:
                    raise ProtocolError(
                        f"truncated frame: the peer closed the stream {decoder.buffered} bytes "
                        "into a frame"
                    ) from None
                raise
            decoder.append(data)
        return frame

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> FrameStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
