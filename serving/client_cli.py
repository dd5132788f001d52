"""Client subcommands of the `seismag` command: predict, stream, plot and embed against a
server."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path

DEFAULT_ADDRESS = (
    "127.0.0.1:8500"  # also seismag.serving.client's; kept here so the CLI starts fast
)


class CliError(Exception):
    """A user-facing problem: printed as `seismag: error: ...` with exit status 2."""


def describe_rpc_error(exc, server: str, args: argparse.Namespace | None = None) -> str:
    """Who refused and why: this client (its message limit, its deadline), the connection, or
    the server (its status and message)."""
    import grpc

    from seismag.serving.client import refused_by_client

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if refused_by_client(exc):
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            timeout = getattr(args, "timeout", None)
            return f"no answer from server {server} within this client's --timeout {timeout} s"
        limit = getattr(args, "max_message_mb", None)
        return (
            f"this client refused to send the request ({details}): its limit is "
            f"--max-message-mb {limit}; the server was not asked"
        )
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return f"cannot reach server {server}: {details}"
    name = code.name if code is not None else "UNKNOWN"
    return f"server {server} answered {name}: {details}"


def _server_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A gRPC failure becomes a one-line CLI error naming who refused, not a traceback."""

    @wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        import grpc

        try:
            return fn(args)
        except grpc.RpcError as exc:
            raise CliError(describe_rpc_error(exc, args.server, args)) from None

    return wrapper


def _connection_args(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--server", default=DEFAULT_ADDRESS, help="HOST:PORT of a seismag server")
    if model:
        p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--token-file", help="file holding a bearer token")
    p.add_argument("--tls-ca", help="CA certificate to verify the server (enables TLS)")
    p.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="client key (mutual TLS)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline per request, seconds")
    p.add_argument(
        "--max-message-mb", type=int, default=64, help="largest message this client sends, MiB"
    )


def _units_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stationxml", help="StationXML to convert counts to ground velocity (m/s)")
    p.add_argument(
        "--units",
        choices=("counts", "m/s"),
        default="",
        help="units of the samples: counts (the default; they need --stationxml or a server "
        "started with --inventory) or m/s (ground velocity already)",
    )


def _client(args: argparse.Namespace):
    from seismag.serving.client import SeismagClient

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return SeismagClient(
        args.server,
        token=token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        timeout=args.timeout,
        max_message_mb=args.max_message_mb,
    )


def _read(path: str):
    from obspy import read

    if Path(path).is_dir():
        raise CliError(
            f"{path} is a folder; give one waveform file (`seismag annotate` reads folders)"
        )
    if not Path(path).is_file():
        raise CliError(f"no such file: {path}")
    try:
        return read(path)
    except Exception as exc:  # ObsPy raises TypeError/ValueError/... for unknown formats
        raise CliError(f"{path}: not a waveform file ObsPy can read ({exc})") from exc


def _picks(values: list[str] | None) -> dict:
    from obspy import UTCDateTime

    picks = {}
    for item in values or []:
        station, sep, when = item.partition("=")
        if not sep:
            raise CliError(f"--pick takes NET.STA[.LOC]=TIME, got {item!r}")
        try:
            picks[station] = UTCDateTime(when)
        except Exception as exc:
            raise CliError(f"--pick {item!r}: bad time ({exc})") from exc
    return picks


def _stationxml(args: argparse.Namespace) -> bytes | None:
    if not args.stationxml:
        return None
    try:
        return Path(args.stationxml).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --stationxml: {exc}") from None


def _too_large(exc) -> str | None:
    """Why a Predict was refused for its size (this client's message limit or the server's
    per-request limits), or None for any other failure (a full queue is not one: retry)."""
    import grpc

    from seismag.serving.client import refused_by_client

    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    if refused_by_client(exc):
        return f"over this client's --max-message-mb {exc.details()!r}"
    details = exc.details() or ""
    return f"the server: {details}" if ("limit" in details or "more than" in details) else None


def _predict(args: argparse.Namespace, path: str):
    """Predict, or for data larger than one Predict allows, the same streamed (every window)."""
    import grpc

    stationxml = _stationxml(args)
    st = _read(path)
    options = dict(
        model=args.model,
        stationxml=stationxml,
        p_picks=_picks(args.pick),
        series_interval=args.interval,
        units=args.units,
    )
    with _client(args) as client:
        if not getattr(args, "stream", False):  # `seismag plot` shares this path
            try:
                return client.predict(st, **options)
            except grpc.RpcError as exc:
                why = _too_large(exc)
                if why is None:
                    raise
                print(
                    f"seismag: {path} is larger than one Predict ({why}); streaming it instead, "
                    "every window evaluated",
                    file=sys.stderr,
                )
        return client.predict_streamed(st, **options)


def _magnitude(value: float, sigma: float, has_sigma: bool) -> str:
    """The magnitude as "3.42 ± 0.21", or "3.42" for a model without a sigma output."""
    return f"{value:5.2f} ± {sigma:.2f}" if has_sigma else f"{value:5.2f}"


def _past_event(args: argparse.Namespace) -> tuple[str, float] | None:
    """``--event ID=MAGNITUDE`` (with ``--table-rows``), checked before anything is sent."""
    if not args.table_rows and not args.event:
        return None
    if not (args.table_rows and args.event):
        raise CliError("--table-rows and --event go together (the rows need the event's id and "
                       "catalogue magnitude)")  # fmt: skip
    if len(args.files) != 1:
        raise CliError("--table-rows takes one file: one past event's stations")
    event, sep, value = args.event.partition("=")
    try:
        magnitude = float(value)
    except ValueError:
        magnitude = math.nan
    if not (sep and event and math.isfinite(magnitude)):
        raise CliError(f"--event takes ID=MAGNITUDE (the catalogue magnitude), got {args.event!r}")
    return event, magnitude


def table_rows(results, event: str, magnitude: float) -> list[dict[str, str]]:
    """The station-table rows of one past event's Predict. The reply's last series value is at
    the data end, a time it does not carry; it is placed at its grid time, which is never earlier
    (with less than one interval of data after the previous value there would be no grid value
    between), so no row holds a value before it existed."""
    import numpy as np

    from seismag.serving.pipeline.station_table import PastStation, prediction_rows

    stations = [
        PastStation(
            r.station_id,
            r.magnitude,
            r.magnitude_sigma,
            r.onset,
            r.series.stats.starttime,
            np.arange(len(r.series.data)) * r.series.stats.delta,
            np.asarray(r.series.data, dtype=np.float64),
            None if r.sigma_series is None else np.asarray(r.sigma_series.data, dtype=np.float64),
        )
        for r in results
    ]
    return prediction_rows(event, magnitude, stations)


@_server_errors
def cmd_predict(args: argparse.Namespace) -> int:
    past = _past_event(args)
    everything = []
    for path in args.files:
        results = _predict(args, path)
        if past is not None:
            from seismag.serving.pipeline.station_table import write_predictions

            rows = table_rows(results, *past)
            try:
                write_predictions(args.table_rows, rows)
            except OSError as exc:
                raise CliError(f"cannot write --table-rows: {exc}") from None
            print(f"appended {len(rows)} rows of event {past[0]} to {args.table_rows}",
                  file=sys.stderr)  # fmt: skip
        if args.json:
            everything += [{"file": path, **r.to_dict()} for r in results]
            continue
        for r in results:
            onset = (
                f"P at {r.onset} ({r.onset_source}, confidence {r.onset_confidence:.2f})"
                if r.onset
                else "no onset used"
            )
            print(
                f"{r.station_id:<16} M {_magnitude(r.magnitude, r.magnitude_sigma, r.has_sigma)}"
                f"  {r.model} {r.model_version}  {onset}\n"
                f"{'':<16} {r.derivation}; series of {len(r.series.data)} values every "
                f"{r.series.stats.delta:g} s from {r.series.stats.starttime}; "
                f"{r.timings_ms.get('total', 0):.1f} ms on the server"
            )
            for warning in r.warnings:
                print(f"{'':<16} warning: {warning}")
    if args.json:
        json.dump(everything, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def embeddings_npz(results) -> dict:
    """The arrays ``seismag embed`` writes: ``stations`` (NET.STA.LOC ids), and per station
    ``<id>/embedding`` (T, D) float32 and ``<id>/times`` (T,) datetime64[ns] UTC, one a step;
    ``encoder`` and ``step_seconds`` (one per station)."""
    import numpy as np

    arrays = {
        "stations": np.array([e.station_id for e in results]),
        "encoder": np.array([f"{e.encoder} {e.encoder_version}" for e in results[:1]]),
        "step_seconds": np.array([e.step_seconds for e in results]),
    }
    for e in results:
        arrays[f"{e.station_id}/embedding"] = e.embedding
        arrays[f"{e.station_id}/times"] = e.times
    return arrays


@_server_errors
def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    st = _read(args.file)
    out = Path(args.out)
    if out.suffix != ".npz":
        raise CliError(f"--out must name a .npz file, got {args.out}")
    with _client(args) as client:
        results = client.embed(
            st, encoder=args.encoder, stationxml=_stationxml(args), units=args.units
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **embeddings_npz(results))
    for e in results:
        t, d = e.embedding.shape
        print(
            f"{e.station_id:<16} {e.encoder} {e.encoder_version}: {t} x {d} from "
            f"{e.window_start} every {e.step_seconds:g} s; {e.timings_ms.get('total', 0):.1f} ms "
            "on the server"
        )
        for warning in e.warnings:
            print(f"{'':<16} warning: {warning}")
    print(f"wrote {out}")
    return 0


class ReplayClock:
    """The time of a replay: where the replayed data would be "now" in a live feed. Lag is
    measured against it, not against the wall clock, which is years past recorded data."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start: float | None = None  # data time (epoch s) when the replay began
        self.sent: float | None = None  # end time of the last record released
        self._wall0 = 0.0

    def begin(self, data_time: float) -> None:
        self.start, self._wall0 = data_time, time.monotonic()

    def now(self) -> float | None:
        """Data time of the replay now; at full speed (0) that of the last record sent."""
        if self.start is None:
            return None
        if self.speed > 0:
            return self.start + (time.monotonic() - self._wall0) * self.speed
        return self.sent

    def lag(self, data_time: float) -> float:
        """Seconds (of replay time) an update for data ending at ``data_time`` came late."""
        now = self.now()
        return max(0.0, now - data_time) if now is not None else 0.0


def replay_records(
    path: str, speed: float, reclen: int = 512, clock: ReplayClock | None = None
) -> Iterator[bytes]:
    """A file's data as miniSEED records in time order, released at ``speed`` x real time;
    ``clock`` (if given) follows the replay's time."""
    from obspy import read

    st = _read(path)
    for tr in st:
        tr.data = tr.data.astype("float32")
    buf = io.BytesIO()
    st.write(buf, format="MSEED", reclen=reclen)
    raw = buf.getvalue()
    records = []
    for offset in range(0, len(raw), reclen):
        rec = raw[offset : offset + reclen]
        end = read(io.BytesIO(rec), format="MSEED")[0].stats.endtime
        records.append((end, rec))
    records.sort(key=lambda r: r[0])
    if not records:
        return
    t0, wall0 = records[0][0], time.monotonic()
    clock = clock or ReplayClock(speed)
    clock.begin(t0.timestamp)
    for end, rec in records:
        if speed > 0:
            # A record can only be sent once its last sample exists in the live feed.
            delay = (end - t0) / speed - (time.monotonic() - wall0)
            if delay > 0:
                time.sleep(delay)
        clock.sent = end.timestamp
        yield rec


def _iso(t: float) -> str:
    """Epoch seconds as ISO-8601 UTC, as Predict's JSON writes times."""
    from obspy import UTCDateTime

    return str(UTCDateTime(t))


def _update_json(u, lag: float) -> str:
    return json.dumps(
        {
            "station": f"{u.network}.{u.station}.{u.location}",
            "time": _iso(u.time),
            "magnitude": u.magnitude,
            "magnitude_sigma": u.magnitude_sigma if u.has_sigma else None,
            "onset": _iso(u.onset) if u.has_onset else None,
            "onset_source": u.onset_source,
            "onset_confidence": u.onset_confidence,
            "lag_s": lag,
            "warnings": list(u.warnings),
        }
    )


def _update_line(u, lag: float) -> str:
    return (
        f"{_iso(u.time)}  {u.network}.{u.station}.{u.location:<3} "
        f"M {_magnitude(u.magnitude, u.magnitude_sigma, u.has_sigma)}  "
        f"lag {lag:6.2f} s" + "".join(f"  [{w}]" for w in u.warnings)
    )


def seedlink_packets(feed, max_traces: int = 256) -> Iterator:
    """Forward a SeedLink feed (``serving.seedlink_feed.SeedLinkFeed``) as Streams: each holds
    every trace received since the last one was sent (one message for many stations under load,
    no added wait). The feed is read in a thread; its end ends this iterator, and an error of
    the SeedLink side is kept in ``feed.error`` (raised here it would reach gRPC, which reports
    a failed request iterator as the seismag call failing with UNKNOWN)."""
    from obspy import Stream

    packets: queue.Queue = queue.Queue(maxsize=10000)
    done = object()
    feed.error = None

    def read() -> None:
        try:
            for trace in feed.traces():
                while not feed.closed:  # a consumer that went away must not block this thread
                    with contextlib.suppress(queue.Full):
                        packets.put(trace, timeout=0.5)
                        break
        except Exception as exc:  # SeedLinkError, or ObsPy failing on a packet
            feed.error = exc
        finally:
            packets.put(done)

    threading.Thread(target=read, daemon=True).start()
    while True:
        traces = [packets.get()]
        while len(traces) < max_traces and traces[-1] is not done:
            try:
                traces.append(packets.get_nowait())
            except queue.Empty:
                break
        finished = traces[-1] is done
        if finished:
            traces.pop()
        if traces:
            yield Stream(traces)
        if finished:
            return


def _seedlink_feed(args: argparse.Namespace):
    from obspy import UTCDateTime

    from seismag.serving.seedlink_feed import SeedLinkFeed, parse_selection

    if not args.select:
        raise CliError("--seedlink needs at least one --select NET.STA[:CHANNELS]")
    if args.end and not args.begin:
        raise CliError("--end needs --begin (a SeedLink time window)")
    try:
        selections = [parse_selection(s) for s in args.select]
        window = [UTCDateTime(t) if t else None for t in (args.begin, args.end)]
        if window[1] is not None:  # SeedLink's TIME takes whole seconds: keep the last one
            window[1] = UTCDateTime(math.ceil(window[1].timestamp))
        return SeedLinkFeed(
            args.seedlink,
            selections,
            begin=window[0],
            end=window[1],
            timeout=args.seedlink_timeout,
            reconnect=args.reconnect,
        )
    except ValueError as exc:  # also UTCDateTime's, for a bad --begin / --end
        raise CliError(str(exc)) from None


@_server_errors
def cmd_stream(args: argparse.Namespace) -> int:
    if bool(args.file) == bool(args.seedlink):
        raise CliError("give a FILE to replay or --seedlink HOST:PORT, not both")
    if not args.seedlink and (args.begin or args.end or args.reconnect):
        raise CliError("--begin, --end and --reconnect are options of --seedlink")
    if not (math.isfinite(args.speed) and args.speed >= 0):
        raise CliError(f"--speed must be 0 (as fast as possible) or positive, got {args.speed}")
    feed, clock = None, None
    if args.seedlink:
        feed = _seedlink_feed(args)
        packets = seedlink_packets(feed)
    else:
        _read(args.file)  # fail early and clearly on a bad file
        clock = ReplayClock(args.speed)  # lag against the replay's time, not 2009's wall clock
        packets = replay_records(args.file, args.speed, clock=clock)
    picks = _picks(args.pick)
    stationxml = _stationxml(args)
    # A SeedLink feed is closed however the call ends, so its reading thread stops.
    with _client(args) as client, contextlib.closing(feed) if feed else contextlib.nullcontext():
        updates = client.stream(
            packets,
            model=args.model,
            hop=args.hop,
            p_picks=picks,
            stationxml=stationxml,
            units=args.units,
            every_window=args.every_window,
        )
        printed = 0
        for u in updates:
            lag = clock.lag(u.time) if clock else u.lag_seconds  # live: the server's wall clock
            print(_update_json(u, lag) if args.json else _update_line(u, lag), flush=True)
            printed += 1
    if feed is not None and feed.error is not None:
        raise CliError(str(feed.error))  # what ended the feed early, after its updates
    if clock is not None and not printed:  # a whole file and not one answer: say why
        raise CliError(
            f"{args.file}: the replay ended without a magnitude: the server found no P onset "
            "with data after it (pass one with --pick NET.STA=TIME, or replay more data)"
        )
    return 0


def _waveform_units(args: argparse.Namespace, stream) -> tuple[object, str]:
    """The stream as plotted and its axis label: ground velocity where a response is known
    (--stationxml) or declared (--units m/s), else counts, as sent."""
    if args.units == "m/s":
        return stream, "ground velocity (m/s)"
    if args.stationxml:
        from obspy import read_inventory

        try:
            st = stream.copy()
            st.remove_response(read_inventory(args.stationxml), output="VEL")
            return st, "ground velocity (m/s)"
        except Exception as exc:  # the server refuses such data with a message of its own
            raise CliError(f"--stationxml: cannot remove the response ({exc})") from exc
    return stream, "counts"


@_server_errors
def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError("plot needs matplotlib: pip install 'seismag[plot]'") from exc
    folder = Path(args.out).resolve().parent
    if not folder.is_dir():  # before asking the server, not after
        raise CliError(f"--out: no such folder: {folder}")
    stream = _read(args.file)
    results = _predict(args, args.file)
    shown, units = _waveform_units(args, stream)
    fig = plot_figure(shown, units, results)
    try:
        fig.savefig(args.out, dpi=120)
    except (OSError, ValueError) as exc:  # unwritable, or a suffix matplotlib has no format for
        raise CliError(f"--out: cannot write {args.out}: {exc}") from None
    finally:
        plt.close(fig)
    print(f"wrote {args.out}")
    return 0


def plot_figure(shown, units: str, results):
    """Per station: its waveform (``units`` on the axis) over its magnitude series with the
    sigma band, the P onset marked on both, a UTC time axis with the date."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results) * 2, 1, figsize=(10, 4 * len(results)), sharex=True, squeeze=False
    )
    for k, r in enumerate(results):
        wave_ax, mag_ax = axes[2 * k, 0], axes[2 * k + 1, 0]
        st = shown.select(network=r.network, station=r.station, location=r.location)
        for tr in st:
            wave_ax.plot(tr.times("matplotlib"), tr.data, lw=0.6, label=tr.stats.channel)
        wave_ax.set_title(
            f"{r.station_id}: M {_magnitude(r.magnitude, r.magnitude_sigma, r.has_sigma)} "
            f"({r.model} {r.model_version})"
        )
        wave_ax.set_ylabel(units)
        times = r.series.times("matplotlib")
        mag_ax.step(times, r.series.data, where="post", color="C3", label="magnitude")
        if r.has_sigma:
            sigma = r.sigma_series.data
            mag_ax.fill_between(
                times,
                r.series.data - sigma,
                r.series.data + sigma,
                step="post",
                color="C3",
                alpha=0.2,
                label="± 1 sigma",
            )
        mag_ax.set_ylabel("magnitude")
        if r.onset is not None:
            for ax in (wave_ax, mag_ax):
                ax.axvline(
                    r.onset.matplotlib_date,
                    color="k",
                    ls="--",
                    lw=0.8,
                    label=f"P ({r.onset_source})",
                )
        wave_ax.legend(loc="upper right", fontsize="small")
        mag_ax.legend(loc="upper right", fontsize="small")
    bottom = axes[-1, 0]
    bottom.xaxis_date()
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M:%S"))
    bottom.set_xlabel("time (UTC)")
    fig.tight_layout()
    return fig


def add_client_commands(sub) -> None:
    p = sub.add_parser("predict", help="magnitudes for waveform files from a running server")
    p.add_argument("files", nargs="+", help="miniSEED (or any ObsPy-readable) files")
    _connection_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pick", action="append", help="P pick NET.STA[.LOC]=TIME (repeatable)")
    _units_args(p)
    p.add_argument("--interval", type=float, default=1.0, help="magnitude series spacing, s")
    p.add_argument(
        "--stream",
        action="store_true",
        help="send the file through StreamPredict as an archive replay (every window, flow "
        "control) instead of one Predict; done by itself when the file is too large for one",
    )
    p.add_argument(
        "--table-rows",
        metavar="CSV",
        help="also append the stations' rows for `seismag station-table` to this CSV (one file, "
        "a past event; needs --event)",
    )
    p.add_argument("--event", metavar="ID=MAGNITUDE", help="the past event's id and catalogue "
                   "magnitude, for --table-rows")  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("stream", help="replay a file or forward SeedLink into StreamPredict")
    p.add_argument("file", nargs="?", help="file to replay as 512-byte miniSEED records")
    _connection_args(p)
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay speed (1 = real time, 0 = max); a replay's lag is measured on its own "
        "clock, a live feed's on the server's wall clock",
    )
    p.add_argument("--hop", type=float, default=0.0, help="seconds between updates (0 = server's)")
    p.add_argument(
        "--every-window",
        action="store_true",
        help="archive replay: every window evaluated, the server reads on as updates go out "
        "(a live stream merges windows that fall due while one is in the model)",
    )
    p.add_argument("--seedlink", help="SeedLink server HOST:PORT to forward instead of a file")
    p.add_argument(
        "--select",
        action="append",
        help="SeedLink stream NET.STA[:CHANNELS] (repeatable; CHANNELS: SeedLink selectors "
        "[LL]CCC, comma-separated, e.g. EH?,HH?; default all)",
    )
    p.add_argument("--begin", help="SeedLink: send data from this time (TIME window)")
    p.add_argument("--end", help="SeedLink: end the stream once data up to this time is sent")
    p.add_argument(
        "--reconnect",
        type=int,
        default=0,
        metavar="N",
        help="SeedLink: reconnect up to N times in a row when the link is lost (waits double "
        "from 1 s, capped; a packet resets the count), resuming after the last packet received",
    )
    p.add_argument(
        "--seedlink-timeout",
        type=float,
        default=120.0,
        help="SeedLink: seconds to connect, and of silence before the link counts as lost",
    )
    p.add_argument("--pick", action="append", help="P pick NET.STA[.LOC]=TIME (repeatable)")
    _units_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per update")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("plot", help="PNG of the waveform with the evolving magnitude")
    p.add_argument("file")
    _connection_args(p)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--pick", action="append", help="P pick NET.STA[.LOC]=TIME (repeatable)")
    _units_args(p)
    p.add_argument("--interval", type=float, default=1.0, help="magnitude series spacing, s")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "embed",
        help="encoder embeddings of each station's latest window, from a running server",
        description="Ask the server's Embed RPC (seismag serve --encoder FILE.onnx) for each "
        "station's embedding and write them to a .npz file: stations, and per station "
        "<NET.STA.LOC>/embedding (T, D) and <NET.STA.LOC>/times (datetime64[ns] UTC, one a step).",
    )
    p.add_argument("file", help="miniSEED (or any ObsPy-readable) file")
    p.add_argument(
        "--encoder", default="", help="encoder name (default: the server's only encoder)"
    )
    p.add_argument("--out", required=True, help=".npz file to write")
    _connection_args(p, model=False)
    _units_args(p)
    p.set_defaults(func=cmd_embed)
