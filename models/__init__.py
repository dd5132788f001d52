"""Magnitude models: cards (torch-free), preprocessing (torch-free) and PyTorch builders.

``build_model`` imports torch lazily, so serving code may import this package freely.
"""

from seismag.models.card import CardError, ModelCard, get_card, load_cards

__all__ = ["CardError", "ModelCard", "build_model", "get_card", "load_cards"]


def build_model(name_or_card: str | ModelCard, **overrides):
    """Instantiate the PyTorch model a card describes (imports torch)."""
    from seismag.models.base import build_from_card

    card = get_card(name_or_card) if isinstance(name_or_card, str) else name_or_card
    return build_from_card(card, **overrides)
