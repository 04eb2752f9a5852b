"""An aiomqtt client whose socket reads can be paused: real backpressure for a flood.

aiomqtt 2.x acknowledges QoS 1 messages (PUBACK) as soon as paho reads them, before our code has
processed them, and its incoming queue either grows without bound or silently discards. Pausing
the socket's reader instead lets TCP flow control push back to the broker, which keeps the
messages in the session's queue (sized for backlogs in the broker config) until we catch up.
Nothing is lost either way: devices resend whatever Vigil did not ack after its commit.

This relies on aiomqtt 2.x's `_on_socket_open` (pinned `aiomqtt>=2.5,<3` in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import aiomqtt


class PausableClient(aiomqtt.Client):
    _vigil_fd: int | None = None
    _vigil_reader: Any = None
    _vigil_paused: bool = False

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt 2.x's own _on_socket_open, keeping the reader callback so it can be paused.
        def callback() -> None:
            try:
                while True:
                    client.loop_read()
                    if hasattr(client._sock, "pending") and client._sock.pending() > 0:
                        continue
                    break
            except Exception as exc:  # a broken socket: disconnect, as aiomqtt does
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            self._vigil_fd, self._vigil_reader = sock.fileno(), callback
            if not self._vigil_paused:
                self._loop.add_reader(sock.fileno(), callback)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the executor thread that runs connect().
        self._loop.call_soon_threadsafe(register)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._vigil_fd = self._vigil_reader = None
        super()._on_socket_close(client, userdata, sock)

    def pause_reading(self) -> None:
        if not self._vigil_paused:
            self._vigil_paused = True
            if self._vigil_fd is not None:
                self._loop.remove_reader(self._vigil_fd)

    def resume_reading(self) -> None:
        if self._vigil_paused:
            self._vigil_paused = False
            if self._vigil_fd is not None and self._vigil_reader is not None:
                self._loop.add_reader(self._vigil_fd, self._vigil_reader)

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """A QoS 0 publish without waiting for the event loop to flush it."""
        self._client.publish(topic, payload, qos=0)

    @property
    def queued(self) -> int:
        return self._queue.qsize()
