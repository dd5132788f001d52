"""The Gaussian uncertainty head: shapes and bounds for every model; beta-NLL learns sigma."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seismag.models import build_model, load_cards  # noqa: E402
from seismag.models.base import SIGMA_RANGE, MagnitudeModel  # noqa: E402
from seismag.models.card import get_card  # noqa: E402
from seismag.training.evaluate import calibration  # noqa: E402
from seismag.training.train import magnitude_loss  # noqa: E402


@pytest.mark.parametrize("name", list(load_cards()))
def test_every_shipped_card_has_a_bounded_sigma_output(name):
    card = get_card(name)
    assert card.uncertainty == "gaussian"
    model = build_model(card).eval()
    w = torch.randn(2, card.in_channels, card.in_samples)
    a = torch.full((2, 1), -6.0)
    with torch.no_grad():
        mean, sigma = model.forward_with_sigma(w, a)
        plain = model(w, a)
    shape = (2, card.in_samples) if card.output == "series" else (2,)
    assert mean.shape == sigma.shape == plain.shape == shape
    assert torch.allclose(mean, plain)
    assert (sigma >= SIGMA_RANGE[0]).all() and (sigma <= SIGMA_RANGE[1]).all()


def test_without_the_head_forward_with_sigma_is_an_error():
    card = dataclasses.replace(get_card("ViTMag"), uncertainty="none")
    model = build_model(card)
    assert model.n_outputs == 1
    with pytest.raises(ValueError, match="without an uncertainty output"):
        model.forward_with_sigma(torch.zeros(1, 3, card.in_samples), torch.zeros(1, 1))


class _Toy(MagnitudeModel):
    """A scalar model whose body sees only the amplitude channel: enough to learn a noise level
    that depends on the input."""

    def __init__(self) -> None:
        super().__init__(in_channels=3, in_samples=16)
        self.n_outputs = 2
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )

    def body(self, x):
        return self.net(x[:, 3:4, 0])


def test_beta_nll_learns_a_heteroscedastic_sigma_that_is_calibrated():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    card = dataclasses.replace(get_card("ViTMag"), uncertainty="gaussian")
    model = _Toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def data(n):
        x = rng.choice([-1.0, 1.0], n)
        noise = np.where(x > 0, 0.5, 0.1)  # five times as uncertain where x > 0
        y = 3.0 + x + rng.normal(0, 1, n) * noise
        w = torch.zeros(n, 3, 16)
        return w, torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y).float(), x

    for _ in range(400):
        w, a, y, _ = data(256)
        loss, _ = magnitude_loss(model, w, a, y, card)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, a, y, x = data(4000)
    with torch.no_grad():
        mean, sigma = model.forward_with_sigma(w, a)
    sigma = sigma.numpy()
    assert np.median(sigma[x > 0]) == pytest.approx(0.5, rel=0.2)
    assert np.median(sigma[x < 0]) == pytest.approx(0.1, rel=0.2)
    c = calibration(y.numpy(), mean.numpy(), sigma)
    assert c["within_1_sigma"] == pytest.approx(0.683, abs=0.05)
    assert c["within_2_sigma"] == pytest.approx(0.954, abs=0.03)
