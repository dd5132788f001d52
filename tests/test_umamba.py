"""U-Mamba magnitude models and the pure-PyTorch Mamba block they are built from."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

import torch.nn.functional as F  # noqa: E402

from seismag.models import build_model  # noqa: E402
from seismag.models.mamba import Mamba, MambaLayer  # noqa: E402
from seismag.models.umamba_mag import UMambaEncoder, UMambaMagV1, UMambaMagV2  # noqa: E402


def inputs(batch: int, in_samples: int = 3001, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, in_samples, generator=g), torch.randn(batch, 1, generator=g)


@pytest.mark.parametrize("name, series", [("UMambaMagV1", True), ("UMambaMagV2", False)])
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shapes_from_cards(name, series, batch):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(*inputs(batch))
    assert tuple(out.shape) == ((batch, 3001) if series else (batch,))
    assert torch.isfinite(out).all()


def test_encoder_sizes_and_token_choice():
    enc = UMambaEncoder(4, 3001)
    assert enc.sizes == [3001, 1501, 751, 376, 188]
    assert enc.channel_token == {1: False, 3: False}  # long maps: tokens are positions
    # Short maps with no more positions than channels switch to channel tokens (U-Mamba).
    enc = UMambaEncoder(4, 64, mamba_stages=[0, 1, 2, 3])
    assert enc.sizes == [64, 32, 16, 8, 4]
    assert enc.channel_token == {0: False, 1: True, 2: True, 3: True}
    skips = enc(torch.randn(2, 4, 64))
    # The stem's output is not a skip (as in the reference): one skip per stage.
    assert [tuple(s.shape) for s in skips] == [
        (2, 8, 32),
        (2, 16, 16),
        (2, 32, 8),
        (2, 64, 4),
    ]


@pytest.mark.parametrize("cls", [UMambaMagV1, UMambaMagV2])
def test_short_windows_with_channel_tokens(cls):
    model = cls(in_samples=61, mamba_stages=[0, 1, 2, 3]).eval()
    with torch.no_grad():
        out = model(*inputs(3, 61))
    assert out.shape[0] == 3 and torch.isfinite(out).all()
    if cls is UMambaMagV1:
        assert tuple(out.shape) == (3, 61)


@pytest.mark.parametrize("channel_token", [False, True])
def test_mamba_reference_and_chunked_agree(channel_token):
    torch.manual_seed(1)
    dim = 20 if channel_token else 16
    chunked = MambaLayer(dim, channel_token=channel_token, scan_impl="chunked")
    reference = MambaLayer(dim, channel_token=channel_token, scan_impl="reference")
    reference.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 16, 100) if not channel_token else torch.randn(2, 40, 20)
    with torch.no_grad():
        a, b = chunked(x), reference(x)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_impl", ["chunked", "reference"])
def test_mamba_is_causal(scan_impl):
    # Changing step t0 may only change outputs at t >= t0: the depthwise conv is left-padded and
    # the scan runs forward in time, so nothing can leak from the future.
    torch.manual_seed(2)
    block = Mamba(8, d_conv=4, scan_impl=scan_impl)
    x = torch.randn(2, 50, 8)
    t0 = 30
    x2 = x.clone()
    x2[:, t0] += 5.0
    with torch.no_grad():
        a, b = block(x), block(x2)
    torch.testing.assert_close(a[:, :t0], b[:, :t0], rtol=0, atol=0)
    assert not torch.allclose(a[:, t0], b[:, t0])


def test_causal_conv_sees_only_the_past():
    torch.manual_seed(3)
    block = Mamba(4, d_conv=4)
    x = torch.zeros(1, block.d_inner, 12)
    x[..., 6] = 1.0  # an impulse at t = 6
    y = block.conv1d(F.pad(x, (block.d_conv - 1, 0)))  # exactly what Mamba.forward does
    assert y.shape == x.shape
    response = (y - block.conv1d.bias[None, :, None]).abs().sum(1)[0]
    assert torch.all(response[:6] == 0)
    assert torch.all(response[6:10] > 0) and torch.all(response[10:] == 0)


def test_mamba_init():
    block = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1)
    assert block.d_inner == 64 and block.dt_rank == 2
    dt = F.softplus(block.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(
        -torch.exp(block.A_log[0]), -torch.arange(1, 17, dtype=torch.float32)
    )
    assert torch.all(block.D == 1)


def test_constructor_validation():
    with pytest.raises(ValueError, match="d_model"):
        Mamba(0)
    with pytest.raises(ValueError, match="d_state"):
        Mamba(8, d_state=0)
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(8, dt_rank="big")
    with pytest.raises(ValueError, match="dt_min"):
        Mamba(8, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="scan_impl"):
        Mamba(8, scan_impl="cuda")
    with pytest.raises(ValueError, match="features_per_stage"):
        UMambaMagV1(features_per_stage=[8, 16, 32])
    with pytest.raises(ValueError, match="strides"):
        UMambaMagV2(strides=[2, 2, 0, 2])
    with pytest.raises(ValueError, match="kernel_size"):
        UMambaMagV2(kernel_size=4)
    with pytest.raises(ValueError, match="mamba_stages"):
        UMambaMagV1(mamba_stages=[4])
    with pytest.raises(ValueError, match="n_conv_per_stage_decoder"):
        UMambaMagV1(n_conv_per_stage_decoder=0)
    with pytest.raises(ValueError, match="pooling_type"):
        UMambaMagV2(pooling_type="median")
    with pytest.raises(ValueError, match="dropout"):
        UMambaMagV2(dropout=1.5)
    with pytest.raises(ValueError, match="hidden_dims"):
        UMambaMagV2(hidden_dims=[128, 0])
    with pytest.raises(ValueError, match="expects dim"):
        MambaLayer(16)(torch.randn(1, 8, 30))


def test_max_pooling_variant():
    model = build_model("UMambaMagV2", pooling_type="max").eval()
    with torch.no_grad():
        assert tuple(model(*inputs(2)).shape) == (2,)
