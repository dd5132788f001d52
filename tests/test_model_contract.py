"""The contract every magnitude model keeps, checked for all six from their cards."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

from seismag.models import build_model, get_card, load_cards  # noqa: E402
from seismag.models.base import MagnitudeModel, count_parameters  # noqa: E402
from seismag.models.preprocess import normalise  # noqa: E402

MODEL_NAMES = list(load_cards())


def make_inputs(card, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(scale=1e-6, size=(batch, card.in_channels, card.in_samples))
    x, log_amp = normalise(raw, card.normalisation)
    return torch.from_numpy(x), torch.from_numpy(log_amp)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request):
    torch.manual_seed(0)
    model = build_model(request.param)
    return model.card, model


@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape(built, batch):
    card, model = built
    model.eval()
    with torch.no_grad():
        out = model(*make_inputs(card, batch))
    expected = (batch, card.in_samples) if card.output == "series" else (batch,)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()


def test_eval_mode_is_deterministic(built):
    card, model = built
    model.eval()
    inputs = make_inputs(card, 3, seed=1)
    with torch.no_grad():
        a, b = model(*inputs), model(*inputs)
    assert torch.equal(a, b)


def test_batch_items_are_independent_in_eval(built):
    # A window's output must not depend on what else is in the batch (no batch statistics).
    card, model = built
    model.eval()
    x, amp = make_inputs(card, 4, seed=2)
    with torch.no_grad():
        full = model(x, amp)
        single = model(x[2:3], amp[2:3])
    torch.testing.assert_close(full[2:3], single, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter(built):
    card, model = built
    model.train()
    model.zero_grad()
    out = model(*make_inputs(card, 2, seed=3))
    (out**2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"{card.name}: no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_amplitude_input_changes_the_output(built):
    # log_amp is the only carrier of absolute amplitude; the model must see it.
    card, model = built
    model.eval()
    x, amp = make_inputs(card, 2, seed=4)
    with torch.no_grad():
        a = model(x, amp)
        b = model(x, amp + 2.0)
    assert not torch.allclose(a, b)


def test_wrong_shapes_are_rejected_clearly(built):
    card, model = built
    x, amp = make_inputs(card, 2)
    with pytest.raises(ValueError, match=r"expects waveform of shape"):
        model(x[:, :, :-1], amp)
    with pytest.raises(ValueError, match=r"expects waveform of shape"):
        model(x[:, :2], amp)
    with pytest.raises(ValueError, match=r"expects waveform of shape"):
        model(x[0], amp)
    with pytest.raises(ValueError, match=r"expects log_amp of shape"):
        model(x, amp[:1])
    with pytest.raises(ValueError, match=r"expects log_amp of shape"):
        model(x, amp[:, 0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_constructor_arguments(name):
    card = get_card(name)
    with pytest.raises(ValueError, match="in_samples"):
        build_model(card, in_samples=4)
    with pytest.raises(ValueError, match="in_channels"):
        build_model(card, in_channels=0)
    with pytest.raises(TypeError):
        build_model(card, no_such_argument=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_built_model_carries_its_card(name):
    model = build_model(name)
    assert isinstance(model, MagnitudeModel)
    assert model.card == get_card(name)
    assert count_parameters(model) > 1000


def test_model_from_weights_uses_the_stored_card_and_checks_the_name(tmp_path):
    import dataclasses

    import torch

    from seismag.models.weights import WeightsError, model_from_weights, save_weights

    # The card the weights were trained with (here the amplitude ablation), not today's card.
    card = dataclasses.replace(get_card("ViTMag"), use_amplitude=False, amplitude_additive=False)
    torch.manual_seed(0)
    model = build_model(card)
    path = save_weights(model, tmp_path / "vit.safetensors")
    loaded = model_from_weights(path, "ViTMag")
    assert loaded.card == card != get_card("ViTMag")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(WeightsError, match="holds weights for ViTMag, not PhaseNetMag"):
        model_from_weights(path, "PhaseNetMag")
