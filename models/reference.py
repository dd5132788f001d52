"""Fidelity to the reference implementation (QuentonYeo/magnitude_estimation).

Two things live here:

* :func:`count_without_amplitude`: a model's parameter count minus the weights that read the
  extra ``log_amp`` input channel, i.e. the count of the same architecture on the reference's
  three-component input; :data:`REFERENCE_COUNTS` holds the reference's own counts.
* the mapping of reference ``state_dict`` names onto seismag's, used by ``seismag
  import-checkpoint`` (:func:`import_state_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seismag.models.card import ModelCard, get_card

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


# --- import of reference checkpoints ------------------------------------------------------------

REFERENCE_REPOSITORY = "QuentonYeo/magnitude_estimation"


@dataclass(frozen=True)
class ReferenceSpec:
    """How one reference model maps onto seismag's."""

    source: str
    """The reference model file in REFERENCE_REPOSITORY (for the docs and error messages)."""
    normalisation: str
    """The card normalisation that reproduces the reference's ``annotate_batch_pre``."""
    renames: tuple[tuple[str, str], ...] = ()
    """``re.sub`` rules applied in order to a reference key to get the seismag key."""
    aliases: tuple[str, ...] = ()
    """Key prefixes that repeat other keys' tensors (a module registered twice): checked equal."""
    dead: tuple[str, ...] = ()
    """Key patterns of weights that never reach the reference's output: dropped."""


REFERENCE_SPECS: dict[str, ReferenceSpec] = {
    "PhaseNetMag": ReferenceSpec(
        "src/my_project/models/phasenet_mag/model.py",
        "std_per_channel",
        renames=((r"^(down_branch\.\d+\.2)\.conv\.", r"\1."),),  # SeisBench Conv1dSame wrapper
    ),
    "AMAG_v2": ReferenceSpec("src/my_project/models/AMAG_v2/model.py", "std_per_channel"),
    "EQTransformerMag": ReferenceSpec(
        "src/my_project/models/EQTransformer/model.py", "std_global_taper"
    ),
    "ViTMag": ReferenceSpec("src/my_project/models/ViT/model_backup.py", "std_per_channel"),
    "UMambaMagV1": ReferenceSpec(
        "src/my_project/models/UMamba_mag/model.py (commit a35b370, with decoder)",
        "std_per_channel",
        renames=((r"^decoder\.seg_layers\.2\.", "head."),),
        aliases=("decoder.encoder.",),
        dead=(r"^decoder\.seg_layers\.[01]\.",),
    ),
    "UMambaMagV2": ReferenceSpec("src/my_project/models/UMamba_mag_v2/model.py", "std_per_channel"),
}


class ReferenceImportError(ValueError):
    """A reference checkpoint cannot be read or does not fit the named model."""


def read_reference_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a reference checkpoint (.pt/.pth via ``weights_only``, or .safetensors).

    A training checkpoint of the reference ({"model_state_dict": ..., "epoch": ...}) is unwrapped.
    Never unpickles arbitrary objects.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ReferenceImportError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReferenceImportError(f"{path}: not a readable checkpoint ({first})") from None
    if isinstance(data, dict):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise ReferenceImportError(f"{path}: holds no state_dict (a mapping of names to tensors)")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReferenceImportError(f"{path}: entries that are not tensors: {bad[:5]}")
    return data


def _inferred_kwargs(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """Architecture options a checkpoint's shapes settle (ViT: transformer MLP depth)."""
    if name != "ViTMag":
        return {}
    prefix = "transformer_encoders.0.mlp.fc"
    fcs = sorted(int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix))
    fcs = sorted(set(fcs))
    if len(fcs) < 2:
        return {}
    dims = [int(state[f"{prefix}{i}.weight"].shape[0]) for i in fcs[:-1]]
    return {"transformer_mlp_dims": dims}


def imported_card(name: str, state: dict[str, Any] | None = None) -> ModelCard:
    """The shipped card of ``name`` changed to the reference's preprocessing and outputs.

    The reference normalises each window in ``annotate_batch_pre`` (demean + std, see
    REFERENCE_SPECS), applies no filter, trains every model on the plain magnitude (no AMAG +1)
    and has no amplitude input, so ``use_amplitude`` is false.
    """
    card = get_card(name)
    spec = REFERENCE_SPECS[name]
    changes: dict[str, Any] = {
        "version": f"{card.version}+reference",
        "description": f"{card.description} Imported from a {REFERENCE_REPOSITORY} checkpoint.",
        "normalisation": spec.normalisation,
        "highpass_hz": 0.0,
        "use_amplitude": False,
        "amplitude_additive": False,
        "label_offset": 0.0,
        "kwargs": {**card.kwargs, **_inferred_kwargs(name, state or {})},
    }
    if hasattr(card, "uncertainty"):  # the reference models have no uncertainty output
        changes["uncertainty"] = "none"
    return dataclasses.replace(card, **changes)


def _seismag_key(spec: ReferenceSpec, key: str) -> str:
    for pattern, repl in spec.renames:
        key = re.sub(pattern, repl, key)
    return key


def map_reference_keys(name: str, reference_keys: list[str]) -> dict[str, str]:
    """Reference key -> seismag key for every reference key that carries weights seismag uses."""
    spec = REFERENCE_SPECS[name]
    mapping = {}
    for key in reference_keys:
        if spec.aliases and key.startswith(spec.aliases):
            continue
        if any(re.search(pattern, key) for pattern in spec.dead):
            continue
        mapping[key] = _seismag_key(spec, key)
    return mapping


def import_state_dict(name: str, state: dict[str, Any]) -> tuple[nn.Module, dict[str, str]]:
    """Build ``name`` with the imported card and fill it from a reference state_dict.

    Returns the model (eval mode) and the key mapping used. The weights that read the amplitude
    channel, which the reference lacks, are zero. Raises :class:`ReferenceImportError` naming the
    first mismatching keys when the state_dict does not fit.
    """
    import torch

    from seismag.models.base import build_from_card

    if name not in REFERENCE_SPECS:
        raise ReferenceImportError(
            f"unknown model {name!r}; models with a reference: {', '.join(REFERENCE_SPECS)}"
        )
    spec = REFERENCE_SPECS[name]
    card = imported_card(name, state)
    model = build_from_card(card, n_outputs=1)
    ours = model.state_dict()
    amp_inputs = set(getattr(model, "amplitude_inputs", ()))
    mapping = map_reference_keys(name, list(state))

    for alias in (k for k in state if spec.aliases and k.startswith(spec.aliases)):
        original = alias[alias.index(".") + 1 :]  # "decoder.encoder.x" repeats "encoder.x"
        if original not in state or not torch.equal(state[alias], state[original]):
            raise ReferenceImportError(f"{name}: {alias} does not repeat {original} as it should")

    unexpected = [k for k, v in mapping.items() if v not in ours]
    missing = sorted(set(ours) - set(mapping.values()))
    wrong_shape = []
    for ref_key, key in mapping.items():
        if key not in ours:
            continue
        want = list(ours[key].shape)
        if key in amp_inputs:
            want[1] -= 1  # the reference has no amplitude channel
        if list(state[ref_key].shape) != want:
            wrong_shape.append(f"{ref_key} {list(state[ref_key].shape)} (expected {want})")
    if unexpected or missing or wrong_shape:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if wrong_shape:
            parts.append(f"wrong shapes {wrong_shape[:5]}")
        raise ReferenceImportError(
            f"the checkpoint does not fit {name} ({spec.source} in {REFERENCE_REPOSITORY}): "
            + "; ".join(parts)
        )

    filled = {}
    for ref_key, key in mapping.items():
        value = state[ref_key].detach().to(ours[key].dtype)
        if key in amp_inputs:
            padded = torch.zeros_like(ours[key])
            padded[:, : value.shape[1]] = value  # amplitude channel (last) stays zero
            value = padded
        filled[key] = value
    model.load_state_dict(filled, strict=True)
    return model.eval(), mapping


def import_checkpoint(name: str, path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Read a reference checkpoint, write seismag weights (safetensors) and the card (TOML)."""
    from seismag.models.weights import save_weights

    if name not in REFERENCE_SPECS:  # before reading a possibly large file
        raise ReferenceImportError(
            f"unknown model {name!r}; models with a reference: {', '.join(REFERENCE_SPECS)}"
        )
    state = read_reference_state_dict(path)
    model, _ = import_state_dict(name, state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_weights(
        model, out / f"{name}.safetensors", extra={"seismag.imported_from": Path(path).name}
    )
    card_path = out / f"{name}.toml"
    card_path.write_text(card_to_toml(model.card), encoding="utf-8")
    return weights, card_path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def card_to_toml(card: ModelCard) -> str:
    """A card as TOML in the layout of ``models/cards/*.toml`` (None fields left out)."""
    data = card.to_dict()
    tables = {k: data.pop(k) for k in ("training", "kwargs")}
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if v is not None]
    for table, values in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
