"""Fidelity to the reference implementation (QuentonYeo/magnitude_estimation).

Two things live here:

* :func:`count_without_amplitude`: a model's parameter count minus the weights that read the
  extra ``log_amp`` input channel, i.e. the count of the same architecture on the reference's
  three-component input; :data:`REFERENCE_COUNTS` holds the reference's own counts.
* the mapping of reference ``state_dict`` names onto seismag's, used by ``seismag
  import-checkpoint`` (:func:`import_state_dict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

REFERENCE_COUNTS: dict[str, int] = {
    "PhaseNetMag": 268_545,
    "AMAG_v2": 1_224_201,
    "EQTransformerMag": 273_251,
    "ViTMag": 2_720_625,
    "UMambaMagV1": 227_419,
    "UMambaMagV2": 191_313,
}
"""Parameters of the reference models as built by its ``create_magnitude_model`` defaults on 3
components (ViTMag: the 2-layer transformer MLP variant; UMambaMagV1: the variant with decoder)."""

DEAD_REFERENCE_PARAMETERS: dict[str, int] = {"UMambaMagV1": 50}
"""Reference parameters that never reach its output, which seismag does not build: UMamba V1's
deep-supervision heads ``decoder.seg_layers.0/1`` (unused with ``deep_supervision=False``)."""


def amplitude_weights(model: nn.Module) -> int:
    """Number of weights that read the ``log_amp`` channel (the last input channel).

    Each architecture lists the parameters fed directly by the input in ``amplitude_inputs``;
    their dim 1 is the input channel axis.
    """
    names = getattr(model, "amplitude_inputs", None)
    if not names:
        raise ValueError(f"{type(model).__name__} does not declare its amplitude_inputs")
    total = 0
    for name in names:
        weight = model.get_parameter(name)
        total += weight[:, -1].numel()
    return total


def count_without_amplitude(model: nn.Module) -> int:
    """Parameter count of ``model`` without the weights of its amplitude input channel."""
    return sum(p.numel() for p in model.parameters()) - amplitude_weights(model)
