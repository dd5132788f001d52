"""Reference fidelity (QuentonYeo/magnitude_estimation): parameter counts, n_outputs, import."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

from seismag.models import build_model, load_cards  # noqa: E402
from seismag.models.reference import (  # noqa: E402
    DEAD_REFERENCE_PARAMETERS,
    REFERENCE_COUNTS,
    amplitude_weights,
    count_without_amplitude,
)

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
