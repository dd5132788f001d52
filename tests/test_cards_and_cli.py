import json
import subprocess
import sys

import pytest

from seismag.cli import main
from seismag.models.card import CardError, ModelCard, get_card, load_cards

EXPECTED = {"PhaseNetMag", "AMAG_v2", "EQTransformerMag", "ViTMag", "UMambaMagV1", "UMambaMagV2"}


def test_six_cards_ship():
    cards = load_cards()
    assert set(cards) == EXPECTED
    # Every shipped model adds log10 amplitude at its output; -7.5 centres what the body learns.
    assert all(c.amplitude_additive and c.label_offset == -7.5 for c in cards.values())
    assert get_card("AMAG_v2").in_samples == 3000
    for card in cards.values():
        assert card.component_order == "ZNE"
        assert (card.output == "series") == (card.scalar_from_series is not None)


def test_card_round_trips_through_dict():
    card = get_card("UMambaMagV2")
    assert ModelCard.from_dict(card.to_dict()) == card


def test_malformed_cards_are_rejected():
    good = get_card("ViTMag").to_dict()
    with pytest.raises(CardError, match="output"):
        ModelCard.from_dict({**good, "output": "vector"})
    with pytest.raises(CardError, match="unknown card fields"):
        ModelCard.from_dict({**good, "colour": "red"})
    with pytest.raises(CardError, match="scalar_from_series"):
        ModelCard.from_dict({**good, "output": "series"})
    with pytest.raises(CardError, match="unknown model"):
        get_card("NoSuchNet")
    # What a typed-in TOML or an edited ONNX file's metadata can hold (TOML's true is an int):
    for field, value, says in (
        ("in_samples", 3001.5, "in_samples must be an integer"),
        ("in_samples", True, "in_samples must be an integer"),
        ("sampling_rate", True, "sampling_rate must be a finite number"),
        ("sampling_rate", 1e9, r"sampling_rate must be in \(0, 10000\]"),  # a memory bomb
        ("label_offset", float("nan"), "label_offset must be a finite number"),
        ("component_order", "ZZE", "distinct letters of ZNE"),
        ("name", "", "needs a name"),
    ):
        with pytest.raises(CardError, match=says):
            ModelCard.from_dict({**good, field: value})


def test_models_json_lists_six_cards(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in listed} == EXPECTED
    assert all({"in_samples", "sampling_rate", "output", "normalisation"} <= set(c) for c in listed)


def test_models_table_and_console_script_without_torch():
    # The listing is what serving-only installs run: it must not import torch.
    code = (
        "import sys; from seismag.cli import main; rc = main(['models']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "PhaseNetMag" in out.stdout and "UMambaMagV2" in out.stdout


def test_bad_subcommand_exits_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "seismag", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--gil-switch-ms", "-1"], "--gil-switch-ms must be in [0, 100]"),
    ],
)
def test_serve_refuses_bad_settings_with_a_message(flags, message, capsys):
    assert main(["serve", "--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err


def _subparsers():
    import argparse

    from seismag.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_help_shows_the_defaults():
    import argparse

    for name, parser in _subparsers().items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.default in (None, False, "", argparse.SUPPRESS):
                continue
            help_text = parser._get_formatter()._expand_help(action)
            assert "default" in help_text, f"seismag {name} {action.option_strings[0]}"
        assert "--help" in text


def test_default_model_rule_lives_in_the_config():
    from seismag.serving.config import DEFAULT_MODEL, ServeConfig

    config = ServeConfig()
    assert config.default_model == DEFAULT_MODEL
    assert config.resolve_default_model([DEFAULT_MODEL, "ViTMag"]) == DEFAULT_MODEL
    assert config.resolve_default_model(["ViTMag"]) == "ViTMag"  # the only one loaded
    with pytest.raises(ValueError, match="--default-model NAME"):
        config.resolve_default_model(["ViTMag", "AMAG_v2"])
    chosen = config.replace(default_model="AMAG_v2")
    assert chosen.resolve_default_model(["ViTMag", "AMAG_v2"]) == "AMAG_v2"
    with pytest.raises(ValueError, match="'AMAG_v2' is not among"):
        chosen.resolve_default_model(["ViTMag"])  # chosen by hand: a mistake, not a fallback


def test_serve_with_an_unloaded_default_model_refuses_in_json_logs():
    flags = ["--port", "0", "--backend", "ort", "--default-model", "AMAG_v2"]
    flags += ["--log-format", "json"]
    proc = subprocess.run(
        [sys.executable, "-m", "seismag", "serve", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    (refusal,) = [r for r in records if r["message"].startswith("cannot start")]
    assert refusal["level"] == "ERROR" and "'AMAG_v2' is not among" in refusal["message"]
    assert refusal["time"].endswith("+00:00")


def test_serve_with_its_metrics_port_taken_refuses_with_one_message():
    import socket

    with socket.socket() as taken:  # another process's port, bound and listening
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--port", "0", "--backend", "ort", "--metrics-port", str(port)]
        proc = subprocess.run(
            [sys.executable, "-m", "seismag", "serve", *flags, "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    (refusal,) = [r for r in records if r["message"].startswith("cannot start")]
    assert f"cannot bind the metrics server to 127.0.0.1:{port}" in refusal["message"]


def test_serve_flags_read_seismag_variables(monkeypatch, capsys):
    from seismag.serving.config import ServeConfig

    monkeypatch.setenv("SEISMAG_PORT", "9123")
    monkeypatch.setenv("SEISMAG_LOG_LEVEL", "WARNING")
    assert ServeConfig.from_env().port == 9123
    assert ServeConfig.from_env().log_level == "WARNING"
    args = _subparsers()["serve"].parse_args([])
    assert args.port == 9123 and args.log_level == "WARNING"
    assert _subparsers()["serve"].parse_args(["--port", "1"]).port == 1  # the flag wins
    monkeypatch.setenv("SEISMAG_PORT", "http")
    assert main(["health"]) == 2
    assert "SEISMAG_PORT='http' is not a valid int" in capsys.readouterr().err


def test_health_without_a_server_is_unhealthy(monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SEISMAG_PORT", str(port))
    assert main(["health", "--timeout", "2"]) == 1
    assert f"127.0.0.1:{port}: UNAVAILABLE" in capsys.readouterr().err


def test_synth_names_the_extra_it_needs():
    # A fresh interpreter in which h5py cannot be imported: the runtime install's situation.
    code = (
        "import sys; sys.modules['h5py'] = None; "
        "from seismag.cli import main; sys.exit(main(['synth', '--out', 'x', '--events', '1']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pip install 'seismag[train]'" in proc.stderr and "h5py" in proc.stderr


def test_health_follows_the_servers_port_and_tls(registry, tmp_path, monkeypatch, capsys):
    # The Docker image's check: the server's SEISMAG_* settings, no address or protocol given.
    from test_server import _cert, _pem

    from seismag.serving.protocols.server import build_server

    ca_key, ca_cert = _cert("seismag test CA", None, None, ca=True, san=False)
    key, cert = _pem(*_cert("localhost", ca_key, ca_cert.subject, ca=False, san=True))
    for name, data in {"ca": _pem(ca_key, ca_cert)[1], "cert": cert, "key": key}.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    srv = build_server(registry, address="127.0.0.1:0", tls_cert=cert, tls_key=key).start()
    try:
        for name, value in {"HOST": "0.0.0.0", "PORT": str(srv.port)}.items():
            monkeypatch.setenv(f"SEISMAG_{name}", value)
        assert main(["health"]) == 1  # plaintext against a TLS server: not healthy
        capsys.readouterr()
        monkeypatch.setenv("SEISMAG_TLS_CERT", str(tmp_path / "cert.pem"))
        monkeypatch.setenv("SEISMAG_TLS_KEY", str(tmp_path / "key.pem"))
        assert main(["health", "--tls-ca", str(tmp_path / "ca.pem")]) == 0
        assert capsys.readouterr().out.strip() == f"localhost:{srv.port}: SERVING"
    finally:
        srv.stop(0)
