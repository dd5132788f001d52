"""A small SeedLink v3 server for tests (not shipped), written from the protocol description in
SeisComP's SeedLink documentation (https://www.seiscomp.de/doc/apps/seedlink.html) and the
commands ObsPy's client sends (https://github.com/obspy/obspy,
obspy/clients/seedlink/client/seedlinkconnection.py).

Commands end with CR (or CR LF). HELLO answers two lines (the version line ObsPy parses for
" v3.1"); STATION sta net, SELECT [!][LL]CCC[.T], DATA [seq [time]], FETCH [seq [time]] and
TIME begin [end] answer OK or ERROR; END starts the data of every negotiated station; BYE
closes. Each data packet is "SL" + 6 hex digits (the station's sequence number) + one 512-byte
miniSEED record. DATA without a sequence number sends records fed after it; DATA seq resumes at
that number; FETCH and TIME begin end send END once the records they ask for are sent (TIME
without an end keeps sending live records). INFO is not served (ERROR).

Records are fed with :meth:`SeedLinkServer.feed` (e.g. ``replay_records(path, speed=0)``);
:meth:`drop` closes the open connections (a lost link), :meth:`close` also stops listening, and
``drop_after`` closes a connection after that many packets, once (a link lost mid-feed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import re
import socket
import threading
from dataclasses import dataclass, field

from obspy import UTCDateTime, read

# [!][LL]CCC[.T]; T is a record type: Data, Event, Calibration, blOckette, Timing, Log.
_SELECTOR = re.compile(r"^(!?)([A-Za-z0-9?-]{2})?([A-Za-z0-9?]{3})(?:\.([DECOTL?]))?$")


@dataclass
class Record:
    net: str
    sta: str
    loc: str
    cha: str
    start: UTCDateTime
    end: UTCDateTime
    seq: int  # per station, as a SeedLink server numbers its ring
    data: bytes


@dataclass
class _Station:
    net: str
    sta: str
    selectors: list[str] = field(default_factory=list)
    action: str = "DATA"
    args: list[str] = field(default_factory=list)


def _matches(rec: Record, selectors: list[str]) -> bool:
    """SeedLink selector semantics: a record passes if it matches a positive selector (or there
    is none) and no negative one; '?' is any character, '-' a blank location character."""
    positive = negative = False
    has_positive = False
    for sel in selectors:
        m = _SELECTOR.match(sel)
        neg, loc, cha, typ = m.groups()
        if typ not in (None, "D", "?"):  # only data records are served
            hit = False
        else:
            loc_ok = loc is None or fnmatch.fnmatchcase(
                rec.loc.ljust(2), loc.replace("-", " ").replace("?", "[A-Za-z0-9 ]")
            )
            hit = loc_ok and fnmatch.fnmatchcase(rec.cha, cha)
        if neg:
            negative |= hit
        else:
            has_positive = True
            positive |= hit
    return (positive or not has_positive) and not negative


def _time(text: str) -> UTCDateTime:
    parts = [int(p) for p in text.split(",")]
    return UTCDateTime(*parts)


class SeedLinkServer:
    """Serves fed miniSEED records on 127.0.0.1 (``address`` is HOST:PORT) from a thread."""

    def __init__(self, stations: list[tuple[str, str]] | None = None, drop_after: int = 0) -> None:
        self._records: list[Record] = []
        self._next_seq: dict[tuple[str, str], int] = {}
        self._known = set(stations or [])
        self._cond = threading.Condition()
        self._conns: list[socket.socket] = []
        self._closed = False
        self.drop_after = drop_after
        self.commands: list[list[str]] = []  # per connection, as received
        self.sent: list[list[tuple[str, int]]] = []  # per connection: (NET.STA, seq)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    # -- feeding and failing -------------------------------------------------------------
    def feed(self, records) -> None:
        with self._cond:
            for data in records:
                tr = read(io.BytesIO(data), format="MSEED", headonly=True)[0]
                key = (tr.stats.network, tr.stats.station)
                self._known.add(key)
                seq = self._next_seq.get(key, 0)
                self._next_seq[key] = seq + 1
                s = tr.stats
                self._records.append(
                    Record(s.network, s.station, s.location, s.channel, s.starttime,
                           s.endtime, seq, data)
                )  # fmt: skip
            self._cond.notify_all()

    def wait_sent(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` packets have been sent over all connections."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(map(len, self.sent)) >= count, timeout)

    def wait_connections(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` connections have started their data (END received)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.sent) >= count, timeout)

    def drop(self) -> None:
        with self._cond:
            conns, self._conns = self._conns, []
        for conn in conns:
            _shut(conn)

    def close(self) -> None:
        self._closed = True
        _shut(self._listener)
        self.drop()
        with self._cond:
            self._cond.notify_all()

    # -- protocol ------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self._conns.append(conn)
                self.commands.append([])
                log = self.commands[-1]
            threading.Thread(target=self._session, args=(conn, log), daemon=True).start()

    def _session(self, conn: socket.socket, log: list[str]) -> None:
        stations: list[_Station] = []
        current: _Station | None = None
        buf = b""
        try:
            while True:
                while b"\r" not in buf:
                    chunk = conn.recv(1024)
                    if not chunk:
                        return
                    buf += chunk
                line, _, buf = buf.partition(b"\r")
                buf = buf.removeprefix(b"\n")
                words = line.decode("ascii", errors="replace").split()
                if not words:
                    continue
                log.append(" ".join(words))
                verb, args = words[0].upper(), words[1:]
                if verb == "HELLO":
                    conn.sendall(b"SeedLink v3.1 (seismag test) :: SLPROTO:3.1\r\nseismag\r\n")
                elif verb == "BYE":
                    return
                elif verb == "STATION" and len(args) in (1, 2):
                    net = args[1] if len(args) == 2 else ""
                    known = any(
                        fnmatch.fnmatchcase(s, args[0]) and fnmatch.fnmatchcase(n, net)
                        for n, s in self._known
                    )
                    current = _Station(net, args[0]) if known else None
                    if current:
                        stations.append(current)
                    conn.sendall(b"OK\r\n" if known else b"ERROR\r\n")
                elif verb == "SELECT" and len(args) <= 1 and current:
                    ok = not args or _SELECTOR.match(args[0])
                    if ok and args:
                        current.selectors.append(args[0])
                    conn.sendall(b"OK\r\n" if ok else b"ERROR\r\n")
                elif verb in ("DATA", "FETCH", "TIME") and current and self._valid(verb, args):
                    current.action, current.args = verb, args
                    with self._cond:  # DATA/FETCH without a number: records fed from now on
                        current.args = args or [f"@{len(self._records)}"]
                    conn.sendall(b"OK\r\n")
                elif verb == "END" and stations:
                    self._stream(conn, stations)
                    return
                else:
                    conn.sendall(b"ERROR\r\n")
        except OSError:
            return
        finally:
            _shut(conn)

    @staticmethod
    def _valid(verb: str, args: list[str]) -> bool:
        try:
            if verb == "TIME":
                return 1 <= len(args) <= 2 and all(_time(a) for a in args)
            if args:
                int(args[0], 16)
                if len(args) > 1:
                    _time(args[1])
            return len(args) <= 2
        except (ValueError, TypeError):
            return False

    def _wanted(self, st: _Station, index: int, rec: Record) -> bool:
        if not (fnmatch.fnmatchcase(rec.sta, st.sta) and fnmatch.fnmatchcase(rec.net, st.net)):
            return False
        if not _matches(rec, st.selectors):
            return False
        first = st.args[0]
        if st.action == "TIME":
            end = _time(st.args[1]) if len(st.args) > 1 else None
            return rec.end > _time(first) and (end is None or rec.start < end)
        if first.startswith("@"):
            return index >= int(first[1:])
        return rec.seq >= int(first, 16)

    def _finite(self, stations: list[_Station]) -> bool:
        """FETCH and TIME begin end stop (END) once the ring has nothing more for them."""
        return all(s.action == "FETCH" or (s.action == "TIME" and len(s.args) > 1)
                   for s in stations)  # fmt: skip

    def _stream(self, conn: socket.socket, stations: list[_Station]) -> None:
        with self._cond:
            self.sent.append([])
            sent = self.sent[-1]
            self._cond.notify_all()
        index, total, finite = 0, 0, self._finite(stations)
        while True:
            with self._cond:
                if finite and index >= len(self._records):
                    break
                self._cond.wait_for(lambda i=index: i < len(self._records) or self._closed)
                if self._closed:
                    return
                rec = self._records[index]
            index += 1
            if not any(self._wanted(st, index - 1, rec) for st in stations):
                continue
            conn.sendall(b"SL%06X" % rec.seq + rec.data)
            total += 1
            with self._cond:
                sent.append((f"{rec.net}.{rec.sta}", rec.seq))
                self._cond.notify_all()
            if self.drop_after and total >= self.drop_after:
                self.drop_after = 0  # once: the next connection is served to the end
                return
        conn.sendall(b"END")
        conn.recv(1024)  # the client closes after END


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
