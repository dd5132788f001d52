"""Which units a request's samples are in, and where their instrument response comes from.

The models read ground velocity in m/s. Samples arrive in counts (what digitisers record, and
what miniSEED holds unless someone converted it) or, when the client says so, already in m/s.
Counts are converted with the channel's response, looked up first in the request's StationXML,
then in the server's inventory (``seismag serve --inventory PATH``). When neither has it the
request is refused with FAILED_PRECONDITION: reading counts as m/s once answered M 8.26 for ObsPy's
RJOB example (M 2.1 with its response), with no warning.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

from obspy import Inventory, UTCDateTime, read_inventory

from seismag.serving.errors import InvalidInput, MissingResponse
from seismag.serving.pipeline.limits import shown

log = logging.getLogger("seismag.serving")

COUNTS = "counts"
VELOCITY = "m/s"
UNITS = (COUNTS, VELOCITY)
"""``input_units`` values; empty means counts."""
INVENTORY_SUFFIXES = (".xml", ".stationxml")


def check_units(value: str) -> str:
    """The request's units: "counts" (also when empty) or "m/s"."""
    units = (value or COUNTS).strip().lower()
    if units not in UNITS:
        raise InvalidInput(
            f"input_units must be one of {UNITS} (empty = counts), got {shown(value)}"
        )
    return units


def _read(data: bytes, name: str) -> Inventory:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_inventory(io.BytesIO(data), format="STATIONXML")
    except Exception as exc:
        raise ValueError(f"{name} is not valid StationXML: {type(exc).__name__}: {exc}") from None


class StationInventory:
    """The server's station metadata: a StationXML file or a folder of them, indexed by channel.

    ``reload()`` reads everything again and swaps the index in one step (a request in flight
    keeps the responses it found); a file that does not parse leaves the previous index in place.
    ``reload_if_changed()`` does so only when a file was added, removed or modified.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._index: dict[str, list[tuple[UTCDateTime | None, UTCDateTime | None, object]]] = {}
        self._stamp: tuple = ()
        self.reload()

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(
                p for p in self.path.iterdir()
                if p.is_file() and p.suffix.lower() in INVENTORY_SUFFIXES
            )  # fmt: skip
        if self.path.is_file():
            return [self.path]
        raise ValueError(f"inventory {self.path} is neither a StationXML file nor a folder")

    def _stamp_now(self, files: Iterable[Path]) -> tuple:
        out = []
        for p in files:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self) -> int:
        """Read every file again; the number of channel epochs now indexed. ValueError (naming
        the file) when one cannot be read: the previous index stays."""
        files = self.files()
        stamp = self._stamp_now(files)
        index: dict[str, list] = {}
        for path in files:
            for net in _read(path.read_bytes(), str(path)):
                for sta in net:
                    for cha in sta:
                        if cha.response is None:
                            continue
                        sid = f"{net.code}.{sta.code}.{cha.location_code}.{cha.code}"
                        epoch = (cha.start_date, cha.end_date, cha.response)
                        index.setdefault(sid, []).append(epoch)
        with self._lock:
            self._index, self._stamp = index, stamp
        return sum(len(v) for v in index.values())

    def reload_if_changed(self) -> bool:
        """Reload when the files changed since the last load; True if it did."""
        try:
            if self._stamp_now(self.files()) == self._stamp:
                return False
        except (OSError, ValueError):
            return False  # a file vanishing between listing and stat: look again next time
        self.reload()
        return True

    @property
    def channels(self) -> int:
        return len(self._index)

    def get_response(self, seed_id: str, time: UTCDateTime):
        """The channel's response at ``time``, or None."""
        for start, end, response in self._index.get(seed_id, ()):
            if (start is None or start <= time) and (end is None or time <= end):
                return response
        return None


class Responses:
    """One request's units and where its responses come from (its StationXML, then the
    server's inventory)."""

    def __init__(
        self,
        units: str = COUNTS,
        request: Inventory | None = None,
        server: StationInventory | None = None,
    ) -> None:
        self.units = check_units(units)
        if self.units == VELOCITY and request is not None:
            raise InvalidInput(
                'input_units "m/s" says the samples are already ground velocity, but the request '
                "also carries StationXML to convert counts: send one or the other"
            )
        self.request = request
        self.server = server

    @property
    def declared(self) -> bool:
        """The client declared the samples m/s: no response is applied."""
        return self.units == VELOCITY

    def find(self, seed_id: str, time: UTCDateTime):
        if self.request is not None:
            try:
                return self.request.get_response(seed_id, time)
            except Exception:  # ObsPy raises a plain Exception when nothing matches
                pass
        if self.server is not None:
            return self.server.get_response(seed_id, time)
        return None

    def require(self, seed_id: str, time: UTCDateTime):
        """The response for counts on this channel, or MissingResponse saying how to send one."""
        response = self.find(seed_id, time)
        if response is not None:
            return response
        looked = []
        looked.append("the request's StationXML lacks it" if self.request else "no StationXML")
        looked.append("the server's inventory lacks it" if self.server else "no server inventory")
        raise MissingResponse(
            f"{seed_id}: the samples are counts (input_units {self.units!r}) and no instrument "
            f"response is known for this channel at {time} ({'; '.join(looked)}), so they "
            "cannot be converted to ground velocity. Send the channel's StationXML (the "
            "request's stationxml field; `seismag predict|stream --stationxml FILE`), have the "
            'server load it (`seismag serve --inventory PATH`), or declare input_units "m/s" '
            "(`--units m/s`) if the samples already are ground velocity"
        )
