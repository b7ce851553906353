"""Connections that never finish a request (slowloris): uvicorn closes a connection idle between requests
(keep-alive), but not one that sends half a request and stops, or connects and sends nothing.

Every request must arrive whole: its headers within `seconds` of the connection or of their first byte, and its
body with no gap between reads longer than `seconds` (nginx's client_header_timeout and client_body_timeout).
A connection that stalls gets 408 and is closed. A request being served, a response being sent, and an idle
keep-alive connection are not stalls: the engine's deadlines and uvicorn's keep-alive bound those."""

from __future__ import annotations

from tandem.server import metrics

TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%s")


def with_stall_timeout(base: type, seconds: float) -> type:
    """uvicorn's HTTP protocol class (h11 or httptools) with the stall timer."""
    stalled = metrics.STALLED.labels("http")

    class Protocol(base):
        _stall_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()  # the first request's headers are due

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                if self._stall_timer is None:
                    self._arm()  # a new request's first bytes: its headers are due from now, not per read
            elif cycle.more_body:
                self._arm()  # a body: the gap between reads is what is bounded
            else:
                self._disarm()  # the request is all here; the app is serving it

        def on_response_complete(self) -> None:
            self._disarm()  # idle between requests now: uvicorn's keep-alive timer takes over
            super().on_response_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._stall_timer = self.loop.call_later(seconds, self._stalled)

        def _disarm(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def _stalled(self) -> None:
            self._stall_timer = None
            cycle = self.cycle
            receiving = cycle is None or cycle.response_complete or (cycle.more_body and not cycle.response_started)
            if not receiving or self.transport.is_closing():
                return
            stalled.inc()
            body = (b'{"error": {"message": "the request did not arrive within %gs (send the headers, and each part '
                    b'of the body, without a longer pause)", "type": "request_timeout", "code": 408}}' % seconds)
            self.transport.write(TIMEOUT_408 % (len(body), body))  # receiving: no response has started
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() answers http.disconnect
                cycle.message_event.set()
            self.transport.close()

    return Protocol
