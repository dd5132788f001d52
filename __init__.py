"""seismag: deep-learning earthquake magnitude models, from PyTorch to ONNX to a gRPC service.

The package maps the repository's top-level folders into one namespace:
``seismag.models`` (cards, preprocessing, PyTorch models), ``seismag.export`` and
``seismag.serving``. Importing ``seismag`` or ``seismag.models`` never imports torch.
"""

__version__ = "0.1.0"
