"""Model-specific checks for EQTransformerMag and ViTMag (generic contract tests live elsewhere)."""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

from seismag.models import build_model, get_card  # noqa: E402
from seismag.models.eqtransformer_mag import EQTransformerMag, _SameConv  # noqa: E402
from seismag.models.vit_mag import ViTMag  # noqa: E402

# Light architectures for the shape tests: the checks are about static length bookkeeping.
SMALL_EQT = {"filters": [4, 8, 8], "kernel_sizes": [5, 3, 3], "res_cnn_kernels": [3, 2]}
SMALL_VIT = {
    "embed_dim": 16,
    "num_heads": 2,
    "num_transformer_blocks": 1,
    "transformer_mlp_dims": [16],
    "final_mlp_dims": [8],
}


def _inputs(batch: int, in_samples: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 1000 + in_samples)
    waveform = torch.randn(batch, channels, in_samples, generator=gen)
    log_amp = torch.randn(batch, 1, generator=gen)
    return waveform, log_amp


# --- EQTransformerMag -------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 11])
@pytest.mark.parametrize("length", [7, 8])
def test_same_conv_keeps_length(kernel: int, length: int) -> None:
    conv = _SameConv(2, 3, kernel)
    assert conv(torch.randn(1, 2, length)).shape == (1, 3, length)


def test_same_conv_even_kernel_leans_right() -> None:
    # Keras 'same' with kernel 2: out[i] = w0 * x[i] + w1 * x[i + 1], zero past the end.
    conv = _SameConv(1, 1, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 10.0]]]))
        conv.bias.zero_()
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert conv(x).flatten().tolist() == [21.0, 32.0, 3.0]


@pytest.mark.parametrize("in_samples", [3001, 1000, 257, 17])
def test_eqt_output_length_matches_input(in_samples: int) -> None:
    model = EQTransformerMag(in_samples=in_samples, **SMALL_EQT).eval()
    with torch.no_grad():
        out = model(*_inputs(2, in_samples))
    assert out.shape == (2, in_samples)


def test_eqt_default_depth_on_odd_short_window() -> None:
    # 7 ceil-mode poolings: 129 -> 65 -> 33 -> 17 -> 9 -> 5 -> 3 -> 2, then cropped back up.
    model = EQTransformerMag(in_channels=1, in_samples=129).eval()
    assert model.bottleneck_samples == 2
    with torch.no_grad():
        assert model(*_inputs(3, 129, channels=1)).shape == (3, 129)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": [8, 16], "kernel_sizes": [3]}, "same length"),
        ({"filters": []}, "non-empty list"),
        ({"filters": [8, 0, 16, 16, 32, 32, 64]}, "positive ints"),
        ({"kernel_sizes": "11,9,7"}, "kernel_sizes"),
        ({"res_cnn_kernels": [3, 2.5]}, "res_cnn_kernels"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\)"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"lstm_blocks": 0}, "lstm_blocks"),
        ({"lstm_hidden": 4.0}, "lstm_hidden"),
        ({"in_samples": 100}, "too short for 7 pooling levels; need at least 128"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_eqt_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EQTransformerMag(**kwargs)


# --- ViTMag -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_samples", "stem", "patches"),
    [(3001, 75, 15), (2000, 50, 10), (1234, 30, 6), (200, 5, 1)],
)
def test_vit_static_patch_count(in_samples: int, stem: int, patches: int) -> None:
    model = ViTMag(in_samples=in_samples, **SMALL_VIT).eval()
    assert (model.stem_samples, model.num_patches) == (stem, patches)
    assert model.patch_embed.position_embedding.shape == (1, patches, 16)
    with torch.no_grad():
        assert model(*_inputs(2, in_samples)).shape == (2,)


def test_vit_default_stem_and_patch_shapes() -> None:
    model = ViTMag().eval()
    waveform, log_amp = _inputs(2, 3001)
    x = torch.cat([waveform, log_amp.unsqueeze(-1).expand(-1, -1, 3001)], dim=1)
    with torch.no_grad():
        for block in model.conv_blocks:
            x = block(x)
    assert x.shape == (2, 32, 75)
    assert model.patch_embed.projection.in_features == 32 * 5
    assert model.patch_embed.projection.out_features == 100
    assert model.output.in_features == 500
    assert model.final_mlp[0].in_features == 15 * 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 100, "num_heads": 3}, r"embed_dim \(100\) must be divisible by num_heads"),
        ({"conv_channels": [32, 32], "pool_sizes": [2, 2, 2]}, "same length"),
        ({"in_samples": 100}, "fewer than one patch of 5"),
        ({"patch_size": 0}, "patch_size"),
        ({"pool_sizes": [2, 0, 2, 5]}, "pool_sizes"),
        ({"final_mlp_dims": []}, "final_mlp_dims"),
        ({"transformer_mlp_dims": [0]}, "transformer_mlp_dims"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"final_dropout": -0.5}, "final_dropout"),
        ({"in_samples": 3001.0}, "in_samples"),
    ],
)
def test_vit_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTMag(**kwargs)


# --- cards and build_model --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["EQTransformerMag", "ViTMag"])
def test_card_kwargs_are_constructor_defaults(name: str) -> None:
    card = get_card(name)
    cls = {"EQTransformerMag": EQTransformerMag, "ViTMag": ViTMag}[name]
    params = inspect.signature(cls.__init__).parameters
    assert card.kwargs, "card has an empty [kwargs] table"
    for key, value in card.kwargs.items():
        assert key in params, f"{name} card names unknown kwarg {key!r}"
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key


@pytest.mark.parametrize(("name", "series"), [("EQTransformerMag", True), ("ViTMag", False)])
@pytest.mark.parametrize("batch", [1, 7])
def test_build_model_output_shape(name: str, series: bool, batch: int) -> None:
    model = build_model(name).eval()
    assert model.card is not None and model.card.name == name
    with torch.no_grad():
        out = model(*_inputs(batch, model.card.in_samples))
    assert out.shape == ((batch, model.card.in_samples) if series else (batch,))
    assert torch.isfinite(out).all()
