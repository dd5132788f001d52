"""The P picker network in ONNX Runtime: raw windows in, P probability per sample out.

The exported file (``seismag export-picker``) carries its
:class:`~seismag.models.picker_card.PickerCard` in the ONNX metadata; the input goes through the
one preprocessing path training used (:func:`seismag.models.preprocess.picker_inputs`). Calls
come from the station pipeline's :class:`~seismag.serving.pipeline.onset.NetworkPicker`, one per
fed chunk with every window that chunk completes: the network is small (one 10 s window is about
a third of a PhaseNetMag window's work), so it runs inline instead of through the batcher.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from seismag.models.card import CardError
from seismag.models.picker_card import CLASSES, PICKER_CARD_KEY, PickerCard
from seismag.models.preprocess import picker_inputs
from seismag.serving.executor.backend import ModelLoadError

PICKERS = ("phasenet", "sta_lta_aic")
"""``--picker`` choices: the network below, or the STA/LTA + AIC picker of the pipeline."""
P_CLASS = CLASSES.index("P")


class PickerRuntime:
    """One picker ONNX file in one ONNX Runtime session (thread-safe: ORT's ``run`` is)."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        from seismag.serving.executor.ort_backend import carded_session

        self.path, self.session, meta = carded_session(
            path, threads, PICKER_CARD_KEY, "picker", "export it with `seismag export-picker`"
        )
        try:
            self.card = PickerCard.from_dict(json.loads(meta[PICKER_CARD_KEY]))
        except (CardError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{self.path}: unreadable picker card: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.name = self.card.name

    def p_probability(self, windows: np.ndarray) -> np.ndarray:
        """(k, C, in_samples) raw windows in the card's component order -> (k, in_samples)."""
        if windows.shape[0] == 0:
            return np.zeros((0, self.card.in_samples), np.float32)
        x = picker_inputs(windows, self.card)
        return self.session.run(None, {self.input_name: x})[0][:, P_CLASS]


def default_picker_path() -> Path:
    """The picker shipped inside the package (``serving/default_picker/PhaseNetPicker.onnx``)."""
    from importlib import resources

    path = Path(str(resources.files("seismag.serving") / "default_picker" / "PhaseNetPicker.onnx"))
    if not path.is_file():
        raise ModelLoadError(f"the packaged picker {path} is missing from this install")
    return path


@lru_cache(maxsize=4)
def default_picker(threads: int = 1) -> PickerRuntime:
    """The packaged picker, loaded once per process and thread count (sessions are shared:
    ``run`` is thread-safe). The server keeps one thread (its stations' pickers run side by
    side); an archive worker gives it the model's threads. The outputs do not depend on it."""
    return PickerRuntime(default_picker_path(), threads=threads)


def load_picker(name: str, threads: int = 1) -> PickerRuntime | None:
    """``--picker`` -> the runtime the station tracks use; None for the STA/LTA + AIC picker."""
    if name not in PICKERS:
        raise ModelLoadError(f"unknown picker {name!r}; choose one of {', '.join(PICKERS)}")
    return default_picker(threads) if name == "phasenet" else None
