"""The README's commands as a newcomer types them: every one parses, every file it names exists,
and the client block (and a serve command) runs against a real server.

The README's client commands talk to the server of its first set-up command (127.0.0.1:8500);
here they talk to a loopback server on a free port: ``--server`` is added and ``SEISMAG_PORT``
set (what ``seismag health`` reads), nothing else of the command changes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seismag.cli import build_parser
from seismag.serving.executor.runtime import ModelRegistry, default_model_path
from seismag.serving.protocols.server import build_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLIENT_COMMANDS = ("predict", "stream", "plot")


def readme_blocks() -> list[list[list[str]]]:
    """Each ```bash block after the set-up one, as its ``seismag`` commands (argv lists)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    out = []
    for block in blocks[1:]:
        lines = [ln for ln in block.splitlines() if ln.startswith("seismag ")]
        out.append([shlex.split(ln, comments=True) for ln in lines])
    return out


def all_commands() -> list[list[str]]:
    return [cmd for block in readme_blocks() for cmd in block]


def client_block() -> list[list[str]]:
    (block,) = [b for b in readme_blocks() if ["seismag", "health"] in b]
    return block


@pytest.mark.parametrize("argv", all_commands(), ids=lambda a: " ".join(a[1:3]))
def test_readme_command_parses_and_its_files_exist(argv):
    args = build_parser().parse_args(argv[1:])  # SystemExit (a test error) on a bad flag
    assert callable(args.func)
    for word in argv:
        if word.startswith("examples/"):
            assert (ROOT / word).is_file(), f"{' '.join(argv)}: {word} is not in the repository"


def test_readme_has_the_commands_a_newcomer_needs():
    verbs = {cmd[1] for cmd in all_commands()}
    assert {"health", "predict", "stream", "plot", "models", "serve", "export"} <= verbs


@pytest.fixture(scope="module")
def server():
    registry = ModelRegistry.from_paths([default_model_path()])
    srv = build_server(registry, address="127.0.0.1:0").start()
    yield srv.port
    srv.stop(0)
    registry.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder where the README's relative paths resolve (examples/) and outputs can land."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "examples").symlink_to(ROOT / "examples")
    return folder


def run(argv: list[str], cwd: Path, port: int, timeout: float = 120):
    """``argv`` as the README writes it, pointed at ``port``; the finished process."""
    extra = ["--server", f"127.0.0.1:{port}"] if argv[1] in CLIENT_COMMANDS else []
    env = {**os.environ, "SEISMAG_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-m", "seismag", *argv[1:], *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_client_block_runs_against_a_server(server, workdir):
    outputs = {}
    for argv in client_block():
        done = run(argv, workdir, server)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
        assert done.stdout.strip(), f"{' '.join(argv)} printed nothing"
        outputs[" ".join(argv[1:3])] = done.stdout
    # predict --json: the RJOB event in counts with its StationXML and the pick.
    (station,) = json.loads(outputs["predict examples/event.mseed"])
    assert station["station"] == "BW.RJOB." and math.isfinite(station["magnitude"])
    assert station["onset"] == "2009-08-24T00:20:08.000000Z"
    # The record converted to m/s gives the magnitude of the counts with their response.
    velocity = outputs["predict examples/velocity.mseed"].split()
    assert velocity[0] == "BW.RJOB." and abs(float(velocity[2]) - station["magnitude"]) < 0.1
    # stream at real-time pace: ISO times, lag measured on the replay's clock (not 2009's).
    lines = outputs["stream examples/event.mseed"].splitlines()
    assert lines and all(line.startswith("2009-08-24T00:20:") for line in lines)
    lags = [float(re.search(r"lag\s+(\S+) s", line).group(1)) for line in lines]
    assert all(0 <= lag < 5 for lag in lags), lags
    assert (workdir / "event.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SERVING" in outputs["health"]
    assert "PhaseNetMag" in outputs["models"]
    assert {c["name"] for c in json.loads(outputs["models --json"])} >= {"PhaseNetMag"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_serve_with_inventory_starts_and_drains(workdir):
    (argv,) = [c for c in all_commands() if c[1] == "serve" and "--inventory" in c]
    port = _free_port()
    argv = [a if a != argv[argv.index("--port") + 1] else str(port) for a in argv]
    proc = subprocess.Popen(
        [sys.executable, "-m", "seismag", *argv[1:]],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            health = run(["seismag", "health"], workdir, port)
            if health.returncode == 0:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert health.returncode == 0, health.stderr
        # The served inventory answers counts without a StationXML in the request.
        done = run(["seismag", "predict", "examples/event.mseed"], workdir, port)
        assert done.returncode == 0 and done.stdout.startswith("BW.RJOB."), done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, log
    assert "inventory" in log and "default model PhaseNetMag" in log


def test_readme_field_block_runs_with_the_shipped_model(workdir):
    pytest.importorskip("sklearn")
    (block,) = [b for b in readme_blocks() if any(c[1:3] == ["field", "make"] for c in b)]
    for argv in block:
        if argv[1] == "serve":
            continue  # its flags parse (above); test_field_serving.py serves field models
        done = run(argv, workdir, port=0, timeout=300)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
        if argv[1:3] == ["field", "eval"]:
            # The README's fields are held-out benchmark fields at 5 % observed.
            psnr = float(re.search(r"PSNR ([0-9.]+) dB", done.stdout).group(1))
            assert psnr > 35.0, done.stdout
    assert (workdir / "fields.png").stat().st_size > 10_000
