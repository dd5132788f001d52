"""Model-specific checks for PhaseNetMag and AMAG_v2 (the generic contract is tested elsewhere)."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

import torch.nn.functional as F  # noqa: E402

from seismag.models import build_model  # noqa: E402
from seismag.models.amag import MagnitudeNet  # noqa: E402
from seismag.models.phasenet_mag import PhaseNetMag, unet_plan  # noqa: E402


def _inputs(batch: int, samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, samples, generator=gen), torch.randn(batch, 1, generator=gen)


@pytest.mark.parametrize("samples", [3001, 3000, 1024, 999, 256])
def test_phasenet_any_window_length(samples):
    model = PhaseNetMag(in_samples=samples).eval()
    with torch.no_grad():
        out = model(*_inputs(2, samples))
    assert out.shape == (2, samples)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("samples", [3000, 1024])
def test_amag_any_window_length(samples):
    model = MagnitudeNet(in_samples=samples).eval()
    with torch.no_grad():
        out = model(*_inputs(2, samples))
    assert out.shape == (2, samples)


def test_plan_at_3001_is_the_reference_phasenet():
    # The reference's strided convs are SeisBench Conv1dSame: 3 samples of padding on both sides
    # (lengths 3001, 751, 188, 47, 12). Its decoder crops [1:-2], then centre-crops to the skip,
    # i.e. starts 1, 1, 1, 2 from the bottom up.
    lengths, crops = unet_plan(3001, depth=5, kernel_size=7, stride=4)
    assert lengths == [3001, 751, 188, 47, 12]
    assert [start for start, _ in crops] == [1, 1, 1, 2]
    assert [stop - start for start, stop in crops] == [47, 188, 751, 3001]


def test_plan_at_3000_is_the_reference_amag():
    # AMAG_v2: stride 2, padding 3, centre crops (x[diff // 2 : -(diff - diff // 2)]).
    lengths, crops = unet_plan(3000, depth=5, kernel_size=7, stride=2, padding=3, crop="centre")
    assert lengths == [3000, 1500, 750, 375, 188]
    assert [start for start, _ in crops] == [3, 2, 2, 2]


def test_phasenet_matches_a_literal_reference_forward():
    # The same weights run through the reference's literal crops give the same output.
    torch.manual_seed(0)
    model = PhaseNetMag().eval()
    x, amp = _inputs(2, 3001)
    with torch.no_grad():
        expected = model(x, amp)
        h = torch.cat([x, amp.unsqueeze(-1).expand(-1, -1, 3001)], dim=1)
        h = torch.relu(model.in_bn(model.inc(h)))
        skips = []
        for conv_same, bn1, conv_down, bn2 in model.down_branch:
            h = torch.relu(bn1(conv_same(h)))
            if conv_down is not None:
                skips.append(h)
                h = torch.relu(bn2(F.conv1d(h, conv_down.weight, conv_down.bias, 4, 3)))
        for (conv_up, bn1, conv_same, bn2), skip in zip(model.up_branch, skips[::-1], strict=True):
            h = torch.relu(bn1(conv_up(h)))[:, :, 1:-2]
            offset = (h.shape[-1] - skip.shape[-1]) // 2
            h = torch.cat([skip, h[:, :, offset : offset + skip.shape[-1]]], dim=1)
            h = torch.relu(bn2(conv_same(h)))
        reference = model.out(h).squeeze(1)
    torch.testing.assert_close(expected, reference)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters_root": 0}, "filters_root"),
        ({"filters_root": 8.0}, "filters_root"),
        ({"depth": 1}, "depth"),
        ({"kernel_size": 6}, "odd"),
        ({"kernel_size": 3}, "must exceed stride"),
        ({"stride": 1}, "stride"),
        ({"stride": True}, "stride"),
        ({"in_samples": 255}, "too small for depth=5"),
        ({"in_samples": 64, "depth": 3}, None),  # 4 ** 2 = 16 <= 64: accepted
    ],
)
def test_phasenet_rejects_bad_arguments(kwargs, message):
    if message is None:
        PhaseNetMag(**kwargs)
        return
    with pytest.raises(ValueError, match=message):
        PhaseNetMag(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"dropout": "0.1"}, "dropout"),
        ({"lstm_hidden": 0}, "lstm_hidden"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": 5}, "must divide the LSTM output width"),
        ({"bidirectional": 1}, "bidirectional"),
        ({"kernel_size": 8}, "odd"),
        ({"in_samples": 15}, "in_samples must be an int >= 16"),
    ],
)
def test_amag_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MagnitudeNet(**kwargs)


def test_amag_unidirectional_variant():
    model = MagnitudeNet(bidirectional=False, lstm_hidden=32, num_heads=4).eval()
    assert not model.lstm.bidirectional
    with torch.no_grad():
        assert model(*_inputs(1, 3000)).shape == (1, 3000)


@pytest.mark.parametrize(("name", "cls"), [("PhaseNetMag", PhaseNetMag), ("AMAG_v2", MagnitudeNet)])
@pytest.mark.parametrize("batch", [1, 7])
def test_build_from_card(name, cls, batch):
    model = build_model(name).eval()
    assert type(model) is cls
    assert model.card is not None and model.card.name == name
    with torch.no_grad():
        out = model(*_inputs(batch, model.card.in_samples))
    assert out.shape == (batch, model.card.in_samples)


def test_amag_forward_removes_the_label_offset():
    # The body learns magnitude - log10 amplitude + offset (the card's -7.5 centres it); forward
    # subtracts the offset once and adds log_amp, so the output is a magnitude, and the offset is
    # a constant of the card, not a weight.
    model = build_model("AMAG_v2").eval()
    assert model.card.label_offset == -7.5 == model.label_offset and model.card.amplitude_additive
    waveform, log_amp = _inputs(1, 3000)
    with torch.no_grad():
        out = model(waveform, log_amp)
        body = model._body_output(waveform, log_amp)[:, 0]  # the card has a sigma head
    torch.testing.assert_close(out, body + 7.5 + log_amp)
    assert not any("offset" in key for key in model.state_dict())
