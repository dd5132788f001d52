"""StationXML for the tests' recordings: ObsPy's example inventory (BW.RJOB's response among
others), and copies of RJOB's station under other codes for tests that rename RJOB's record.

Samples are counts unless a request declares them m/s, so every test that sends ObsPy's RJOB
record (counts) sends or serves its response; synthetic records (velocity in m/s) declare it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from pathlib import Path

from obspy import Inventory, read_inventory


def rjob_inventory(codes: Iterable[str] = ()) -> Inventory:
    """ObsPy's example inventory, plus BW.RJOB's station copied under each of ``codes``."""
    inv = read_inventory()
    bw = next(net for net in inv if net.code == "BW")
    rjob = [sta for sta in bw if sta.code == "RJOB"]
    for code in codes:
        for sta in rjob:
            twin = copy.deepcopy(sta)
            twin.code = code
            bw.stations.append(twin)
    return inv


def stationxml(codes: Iterable[str] = ()) -> bytes:
    buf = io.BytesIO()
    rjob_inventory(codes).write(buf, format="STATIONXML")
    return buf.getvalue()


def write_inventory(path: Path, codes: Iterable[str] = ()) -> Path:
    path.write_bytes(stationxml(codes))
    return path
