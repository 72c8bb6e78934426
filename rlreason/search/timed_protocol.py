"""uvicorn's HTTP protocol with a deadline for request headers, for `rlreason serve-search`.

uvicorn waits forever for a request whose headers never finish: its keep-alive timer is cancelled by the
first byte of a request and nothing re-arms it, so a few hundred half-sent requests held connections
open for as long as their senders liked. The body has its own deadline (server.read_body)."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class TimedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """Closes a connection whose next request's headers have not all arrived `read_timeout_s` seconds
    after its first byte (or after the connection opened). Requests being served are left alone."""

    read_timeout_s: float = 10.0  # set from Limits.read_timeout_s by server.create_app, in each process

    def connection_made(self, transport: Any) -> None:
        self._header_timer: Any = None
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm_header_timer()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._cancel_header_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is None or cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.read_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()
