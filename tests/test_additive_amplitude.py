"""Cards with ``amplitude_additive``: magnitude = log_amp + what the body infers from shape."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seismag.models import build_model, get_card  # noqa: E402
from seismag.training.train import BETA_NLL, magnitude_loss  # noqa: E402
from seismag.training.windows import target  # noqa: E402


@pytest.mark.parametrize("name", ["PhaseNetMag", "ViTMag"])
def test_a_gain_error_shifts_every_magnitude_by_its_log(name):
    card = dataclasses.replace(get_card(name), amplitude_additive=True, label_offset=-7.5)
    torch.manual_seed(0)
    model = build_model(card).eval()
    x = torch.randn(2, card.in_channels, card.in_samples)
    a = torch.tensor([[-5.0], [-3.0]])
    with torch.no_grad():
        m1, s1 = model.forward_with_sigma(x, a)
        m2, s2 = model.forward_with_sigma(x, a + 2.0)  # counts mistaken for m/s: 100x
    torch.testing.assert_close(m2 - m1, torch.full_like(m1, 2.0))
    torch.testing.assert_close(s1, s2)  # the body never saw the amplitude
    plain_card = dataclasses.replace(get_card(name), amplitude_additive=False, label_offset=0.0)
    plain = build_model(plain_card).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x, a + 2.0) - plain(x, a), torch.full_like(m1, 2.0))


def test_series_targets_before_p_are_left_out_of_the_loss():
    card = dataclasses.replace(get_card("PhaseNetMag"), amplitude_additive=True)
    y = target(card.in_samples, 1000, 4.2, card)
    assert np.isnan(y[:1000]).all() and np.allclose(y[1000:], 4.2)
    model = build_model(card).eval()
    x = torch.randn(1, card.in_channels, card.in_samples)
    a = torch.tensor([[-4.0]])
    yt = torch.from_numpy(y)[None]
    loss, _ = magnitude_loss(model, x, a, yt, card)
    garbage = yt.clone()
    garbage[:, :1000] = 1e6  # whatever stands before P cannot matter
    loss2, _ = magnitude_loss(model, x, a, torch.where(torch.isnan(yt), garbage, yt), card)
    assert torch.isfinite(loss)
    # the masked loss equals the loss on the post-P samples alone
    mean, sigma = model.forward_with_sigma(x, a)
    post = slice(1000, None)
    nll = torch.log(sigma[:, post]) + 0.5 * ((yt[:, post] - mean[:, post]) / sigma[:, post]) ** 2
    weight = sigma[:, post].detach() ** (2 * BETA_NLL)
    torch.testing.assert_close(loss, (weight * nll).mean())
    assert loss2 > loss  # non-NaN garbage is a label, and counts


def test_the_onnx_export_adds_the_amplitude_too(tmp_path):
    import onnxruntime as ort

    from seismag.export.onnx_export import export_onnx

    card = dataclasses.replace(get_card("PhaseNetMag"), amplitude_additive=True, label_offset=-7.5)
    torch.manual_seed(0)
    model = build_model(card).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, card.in_samples)).astype(np.float32)
    a = np.array([[-5.0], [-2.0]], dtype=np.float32)
    got = sess.run(None, {"waveform": x, "log_amp": a})
    with torch.no_grad():
        want = model.forward_with_sigma(torch.from_numpy(x), torch.from_numpy(a))
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-4)
