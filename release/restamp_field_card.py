"""Re-stamp an exported field model with its card's current sampling defaults.

    python release/restamp_field_card.py serving/default_field/FieldFlow.onnx

A field card's sampler, steps and samples are defaults the server applies at request time; the
exported graph (the network) does not depend on them. When they change in
``models/cards/fields/NAME.toml`` the shipped file needs its card metadata rewritten, not a new
export from weights (the shipped FieldFlow's safetensors are not in the repository). The file's
own training record (``training``, ``prior_params``) and weights provenance are kept: they
describe the weights in it, which do not change. Everything else in the card must be equal to
the TOML card except the keys listed in ``SAMPLING``, ``version`` and ``description``; anything
else differing (the architecture, the value range) needs a real export and is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from seismag.models.field_card import FIELD_CARD_KEY, FieldCard, get_field_card

SAMPLING = ("sampler", "steps", "samples")
"""Card keys read only at request time (models/field_sampler.py)."""
RESTAMPABLE = (*SAMPLING, "version", "description")
KEPT_FROM_FILE = ("training", "prior_params")


def restamp(path: Path) -> tuple[dict, dict]:
    """Rewrite ``path``'s card metadata from its TOML card; returns (old, new) card dicts."""
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if FIELD_CARD_KEY not in meta:
        raise SystemExit(f"{path}: no field card in its metadata (key {FIELD_CARD_KEY!r})")
    # Through the card class: keys an older export lacks read as their defaults.
    old = json.loads(FieldCard.from_dict(json.loads(meta[FIELD_CARD_KEY])).to_json())
    new = json.loads(get_field_card(old["name"]).to_json())
    for key in KEPT_FROM_FILE:
        new[key] = old.get(key, new[key])
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in differing if k not in RESTAMPABLE]
    if refused:
        raise SystemExit(
            f"{path}: the card differs from models/cards/fields/{old['name']}.toml in {refused}, "
            "which the exported graph depends on: export it again from its weights"
        )
    card = FieldCard.from_dict(new)  # validates the result
    meta[FIELD_CARD_KEY] = card.to_json()
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"{card.name} {card.version}: {card.description}"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return old, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="exported field models (.onnx)")
    args = parser.parse_args(argv)
    for path in args.files:
        old, new = restamp(path)
        changed = {k: (old.get(k), new.get(k)) for k in RESTAMPABLE if old.get(k) != new.get(k)}
        print(f"{path}: {changed or 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
