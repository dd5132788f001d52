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
    assert get_card("AMAG_v2").label_offset == 1.0
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
