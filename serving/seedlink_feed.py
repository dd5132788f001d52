"""A SeedLink feed read with ObsPy's SeedLink client (`obspy.clients.seedlink`), for
`seismag stream --seedlink`: clean ends, errors that name the SeedLink side, and reconnects that
resume after the last packet received (SeedLink sequence numbers, so nothing twice)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from obspy import Trace, UTCDateTime
from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
from obspy.clients.seedlink.seedlinkexception import SeedLinkException
from obspy.clients.seedlink.slpacket import SLPacket

MAX_BACKOFF_S = 30.0
"""Longest wait between reconnect attempts (1, 2, 4, ... s, then this)."""

_CODE = re.compile(r"^[A-Za-z0-9?*]{1,8}$")
# SeedLink v3 selectors: [!][LL]CCC[.T], '?' for any character, '-' for a blank location.
_SELECTOR = re.compile(r"^!?([A-Za-z0-9?-]{2})?[A-Za-z0-9?]{3}(\.[A-Za-z?])?$")


class SeedLinkError(Exception):
    """A problem on the SeedLink side (its server, its answers, the connection to it)."""


@dataclass(frozen=True)
class Selection:
    network: str
    station: str
    selectors: tuple[str, ...]


def parse_selection(text: str) -> Selection:
    """``NET.STA[:SEL[,SEL...]]`` (e.g. ``BW.RJOB:EH?``); no selector means every channel."""
    net_sta, _, channels = text.partition(":")
    net, _, sta = net_sta.partition(".")
    selectors = tuple(s for s in re.split(r"[,\s]+", channels) if s) or ("???",)
    if not (_CODE.match(net) and _CODE.match(sta)) or not all(map(_SELECTOR.match, selectors)):
        raise ValueError(
            f"--select takes NET.STA[:CHANNELS] (e.g. BW.RJOB or BW.RJOB:EH?,HH?), got {text!r}"
        )
    return Selection(net, sta, selectors)


def parse_address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--seedlink takes HOST:PORT, got {text!r}")
    return text


def _text(exc: Exception) -> str:
    """ObsPy's SeedLinkException prints its repr; its message is ``value``."""
    text = str(getattr(exc, "value", None) or exc)
    return text.replace("cannot connect to SeedLink server: ", "cannot connect: ")


class _Connection(SeedLinkConnection):
    """ObsPy 1.5.1's connection with the behaviours a forwarder cannot live with changed:

    - ``timeout=None`` (its default) breaks ``connect()`` ("'<' not supported between float and
      NoneType"), while a timeout given to the constructor also ends every ``collect()`` that
      waits longer for a packet: here the timeout applies to connecting only;
    - end of file (``recv`` returns nothing) is taken for "no data yet" and polled forever, and
      a server that refuses a station or selector is asked again every ``netdly`` s forever:
      both end ``collect()`` here, with ``failure`` saying why.
    """

    def __init__(self, connect_timeout: float, silence_timeout: float) -> None:
        super().__init__(timeout=None)
        self.connect_timeout = connect_timeout
        self.netto = silence_timeout  # the socket timeout ObsPy sets once connected
        self.failure: str | None = None
        self.refused: list[str] = []
        self.negotiated = False

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.terminate_flag = True  # collect() returns SLTERMINATE at its next pass

    def connect(self) -> None:
        self.timeout = self.connect_timeout
        try:
            super().connect()
        finally:
            self.timeout = None

    def receive_data(self, maxbytes: int, code) -> bytes:
        try:
            data = self.socket.recv(maxbytes)
        except TimeoutError:
            self.fail(f"no data for {self.netto:g} s")
            raise
        except OSError as exc:
            self.fail(f"connection lost ({exc})")
            raise
        if not data:
            self.fail("the server closed the connection")
            raise ConnectionResetError("closed by the SeedLink server")
        return data

    def send_data(self, sendbytes: bytes, code, resplen: int):
        reply = super().send_data(sendbytes, code, resplen)
        if reply == b"ERROR\r\n":
            self.refused.append(" ".join(sendbytes.decode(errors="replace").split()))
        return reply

    def _refusal(self) -> str:
        if not self.refused:
            return ""
        said = ", ".join(map(repr, self.refused))
        return f"the server refused {said} (no such station, or a selector it does not accept)"

    def config_link(self) -> None:
        self.refused = []
        try:
            super().config_link()
        except Exception as exc:
            self.fail(self.failure or self._refusal() or f"negotiation failed ({_text(exc)})")
            raise
        if self.refused:
            self.fail(self._refusal())
            raise SeedLinkException(self.failure)
        self.negotiated = True


class SeedLinkFeed:
    """Traces from a SeedLink server, in the order they arrive.

    ``traces()`` ends after the server's END (a time window or FETCH is complete) and raises
    :class:`SeedLinkError` when the connection is refused, fails or is lost; a lost connection
    is re-established up to ``reconnect`` times in a row (waits 1, 2, 4 ... ``MAX_BACKOFF_S`` s;
    a packet received resets the count), asking each station for the packet after the last one
    received. ``close()`` (any thread) ends ``traces()`` quietly.
    """

    def __init__(
        self,
        address: str,
        selections: list[Selection],
        *,
        begin: UTCDateTime | None = None,
        end: UTCDateTime | None = None,
        timeout: float = 120.0,
        reconnect: int = 0,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.address = parse_address(address)
        self.reconnect = reconnect
        self.notice = notice or (lambda msg: print(f"seismag: {msg}", file=sys.stderr))
        self._stop = threading.Event()
        self.error: Exception | None = None  # set by a reader that ran traces() in a thread
        conn = _Connection(connect_timeout=timeout, silence_timeout=timeout)
        conn.set_sl_address(self.address)
        for sel in selections:
            conn.add_stream(sel.network, sel.station, " ".join(sel.selectors), -1, None)
        conn.begin_time, conn.end_time = begin, end
        self._conn = conn
        # ObsPy logs each step (and "terminating collect loop") itself; the errors that matter
        # are raised here, so its records are not printed unless the application logs them.
        logging.getLogger("obspy.clients.seedlink").addHandler(logging.NullHandler())

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        sock = self._conn.socket
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes a recv() blocked in the reading thread
                sock.shutdown(socket.SHUT_RDWR)

    def _error(self, reason: str) -> SeedLinkError:
        return SeedLinkError(f"SeedLink server {self.address}: {reason}")

    def traces(self) -> Iterator[Trace]:
        conn, failures = self._conn, 0
        while not self._stop.is_set():
            conn.failure = None
            try:
                packet = conn.collect()
            except (SeedLinkException, OSError) as exc:  # connect() raises, collect() does not
                conn.disconnect()
                packet, reason = None, conn.failure or _text(exc)
            else:
                reason = conn.failure
            if self._stop.is_set():
                break
            if packet == SLPacket.SLERROR:
                raise self._error("it answered ERROR while sending data")
            if isinstance(packet, SLPacket):
                if packet.get_type() not in (SLPacket.TYPE_SLINF, SLPacket.TYPE_SLINFT):
                    failures = 0
                    yield packet.get_trace()
                continue
            if reason is None:  # END: the requested window or FETCH is complete
                return
            if not conn.negotiated or conn.refused or failures >= self.reconnect:
                tries = f" (after {failures} reconnect attempts)" if failures else ""
                raise self._error(reason + tries)
            failures += 1
            wait = min(2.0 ** (failures - 1), MAX_BACKOFF_S)
            self.notice(
                f"SeedLink server {self.address}: {reason}; reconnecting in {wait:g} s "
                f"(attempt {failures} of {self.reconnect})"
            )
            self._stop.wait(wait)
        conn.close()
