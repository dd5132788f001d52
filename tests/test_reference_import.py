"""Reference fidelity (QuentonYeo/magnitude_estimation): parameter counts, n_outputs, import."""

import json
import tomllib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

from seismag.cli import main as cli_main  # noqa: E402
from seismag.models import ModelCard, build_model, load_cards  # noqa: E402
from seismag.models.base import build_from_card  # noqa: E402
from seismag.models.reference import (  # noqa: E402
    DEAD_REFERENCE_PARAMETERS,
    REFERENCE_COUNTS,
    REFERENCE_SPECS,
    amplitude_weights,
    count_without_amplitude,
    import_checkpoint,
    map_reference_keys,
)
from seismag.models.weights import load_weights, read_card  # noqa: E402

# Counted by hand on the built models; the reference's own counts are in REFERENCE_COUNTS.
SEISMAG_COUNTS = {
    "PhaseNetMag": 268_545,
    "AMAG_v2": 1_224_201,
    "EQTransformerMag": 273_251,
    "ViTMag": 2_720_625,
    "UMambaMagV1": 227_369,  # the reference's 227,419 minus its 50 dead deep-supervision weights
    "UMambaMagV2": 191_313,
}
SERIES = {"PhaseNetMag", "AMAG_v2", "EQTransformerMag", "UMambaMagV1"}


@pytest.mark.parametrize("name", sorted(SEISMAG_COUNTS))
def test_count_without_amplitude_is_pinned(name):
    model = build_model(name, n_outputs=1)
    assert count_without_amplitude(model) == SEISMAG_COUNTS[name]
    reference = REFERENCE_COUNTS[name] - DEAD_REFERENCE_PARAMETERS.get(name, 0)
    assert count_without_amplitude(model) == reference
    assert abs(SEISMAG_COUNTS[name] - REFERENCE_COUNTS[name]) <= 0.01 * REFERENCE_COUNTS[name]


@pytest.mark.parametrize("name", sorted(SEISMAG_COUNTS))
def test_amplitude_weights_are_the_first_layer_slice(name):
    # Removing the amplitude channel is the same as building the body for one channel fewer.
    with_amp = build_model(name, n_outputs=1)
    card = with_amp.card
    assert card is not None
    narrower = build_model(name, n_outputs=1, in_channels=card.in_channels - 1)
    total = sum(p.numel() for p in with_amp.parameters())
    assert total - amplitude_weights(with_amp) == sum(p.numel() for p in narrower.parameters())


def test_every_card_is_covered():
    assert set(load_cards()) == set(SEISMAG_COUNTS)


@pytest.mark.parametrize("name", sorted(SEISMAG_COUNTS))
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_n_outputs_shapes(name, n_outputs):
    torch.manual_seed(0)
    model = build_model(name, n_outputs=n_outputs).eval()
    card = model.card
    x = torch.randn(2, card.in_channels + 1, card.in_samples)
    with torch.no_grad():
        out = model.body(x)
    if name in SERIES:
        expected = (2, card.in_samples) if n_outputs == 1 else (2, 2, card.in_samples)
    else:
        expected = (2,) if n_outputs == 1 else (2, 2)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SEISMAG_COUNTS))
def test_n_outputs_adds_only_final_layer_weights(name):
    one = sum(p.numel() for p in build_model(name, n_outputs=1).parameters())
    two = sum(p.numel() for p in build_model(name, n_outputs=2).parameters())
    assert 0 < two - one <= 1001  # one more output channel of the final layer (ViT: 500 + 1)


# --- import-checkpoint ---------------------------------------------------------------------------

KEYS_DIR = Path(__file__).resolve().parents[1] / "models" / "reference_keys"


def _fake_reference_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the reference's names and shapes (models/reference_keys)."""
    shapes = json.loads((KEYS_DIR / f"{name}.json").read_text())["parameters"]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    for alias in REFERENCE_SPECS[name].aliases:  # a module registered twice: same tensors
        for key in state:
            if key.startswith(alias):
                state[key] = state[key[key.index(".") + 1 :]]
    return state


@pytest.mark.parametrize("name", sorted(SEISMAG_COUNTS))
def test_import_fills_every_parameter_bijectively(name, tmp_path):
    state = _fake_reference_state(name)
    path = tmp_path / "reference.pt"
    torch.save({"model_state_dict": state, "epoch": 3}, path)  # a reference training checkpoint
    assert cli_main(["import-checkpoint", name, str(path), "--out", str(tmp_path / "out")]) == 0

    card = read_card(tmp_path / "out" / f"{name}.safetensors")
    written = tomllib.loads((tmp_path / "out" / f"{name}.toml").read_text())
    assert ModelCard.from_dict(written) == card
    assert not card.use_amplitude and card.label_offset == 0.0 and card.highpass_hz == 0.0
    assert card.normalisation == REFERENCE_SPECS[name].normalisation
    model = build_from_card(card, n_outputs=1)
    load_weights(model, tmp_path / "out" / f"{name}.safetensors")
    ours = model.state_dict()

    mapping = map_reference_keys(name, list(state))
    assert len(set(mapping.values())) == len(mapping)  # injective
    assert set(mapping.values()) == set(ours)  # onto: every seismag tensor comes from one key
    skipped = set(state) - set(mapping)
    spec = REFERENCE_SPECS[name]
    assert all(k.startswith(spec.aliases) or k.startswith("decoder.seg_layers.") for k in skipped)
    amp_inputs = set(model.amplitude_inputs)
    for ref_key, key in mapping.items():
        if key in amp_inputs:
            torch.testing.assert_close(ours[key][:, :-1], state[ref_key])
            assert not ours[key][:, -1].any()  # the amplitude channel is zero
        else:
            torch.testing.assert_close(ours[key], state[ref_key].to(ours[key].dtype))


def test_import_names_the_first_mismatching_keys(tmp_path, capsys):
    state = _fake_reference_state("PhaseNetMag")
    state["inc.bogus"] = state.pop("inc.bias")
    state["out.weight"] = torch.randn(1, 16, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    assert cli_main(["import-checkpoint", "PhaseNetMag", str(path)]) == 2
    err = capsys.readouterr().err
    assert "inc.bogus" in err and "inc.bias" in err and "out.weight" in err
    assert "Traceback" not in err


def test_import_rejects_unreadable_file_and_unknown_model(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert cli_main(["import-checkpoint", "PhaseNetMag", str(garbage)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert cli_main(["import-checkpoint", "NoSuchModel", str(garbage)]) == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err
    assert cli_main(["import-checkpoint", "PhaseNetMag", str(tmp_path / "absent.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_import_reads_safetensors_and_infers_vit_mlp_depth(tmp_path):
    from safetensors.torch import save_file

    state = _fake_reference_state("ViTMag")
    for i in range(4):  # the reference's later revision: a 200 -> 100 -> 100 transformer MLP
        p = f"transformer_encoders.{i}.mlp."
        state[p + "fc2.weight"], state[p + "fc2.bias"] = torch.randn(100, 200), torch.randn(100)
        state[p + "fc3.weight"], state[p + "fc3.bias"] = torch.randn(100, 100), torch.randn(100)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    weights, _ = import_checkpoint("ViTMag", path, tmp_path / "out")
    assert read_card(weights).kwargs["transformer_mlp_dims"] == [200, 100]


@pytest.mark.parametrize("method", ["std_per_channel", "std_global_taper"])
def test_reference_normalisations_match_the_reference_formulas(method):
    from seismag.models.preprocess import normalise

    raw = torch.randn(2, 3, 500, generator=torch.Generator().manual_seed(5)) * 1e-6 + 3e-6
    x = raw - raw.mean(dim=-1, keepdim=True)  # the reference's annotate_batch_pre, in torch
    if method == "std_per_channel":
        x = x / (x.std(dim=-1, keepdim=True) + 1e-10)
    else:
        x = x / (x.std(dim=(-1, -2), keepdim=True) + 1e-10)
        tap = 0.5 * (1 + torch.cos(torch.linspace(torch.pi, 2 * torch.pi, 6)))
        x[:, :, :6] *= tap
        x[:, :, -6:] *= tap.flip(dims=(0,))
    ours, _ = normalise(raw.numpy(), method)
    torch.testing.assert_close(torch.from_numpy(ours), x, rtol=1e-5, atol=1e-5)
