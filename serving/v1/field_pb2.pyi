from seismag.serving.v1 import seismag_pb2 as _seismag_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObservedField(_message.Message):
    __slots__ = ("coords", "values", "source")
    COORDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    coords: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    source: EventSource
    def __init__(self, coords: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ..., source: _Optional[_Union[EventSource, _Mapping]] = ...) -> None: ...

class EventSource(_message.Message):
    __slots__ = ("magnitude", "epicentre_row", "epicentre_column", "depth_km")
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    EPICENTRE_ROW_FIELD_NUMBER: _ClassVar[int]
    EPICENTRE_COLUMN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_KM_FIELD_NUMBER: _ClassVar[int]
    magnitude: float
    epicentre_row: float
    epicentre_column: float
    depth_km: float
    def __init__(self, magnitude: _Optional[float] = ..., epicentre_row: _Optional[float] = ..., epicentre_column: _Optional[float] = ..., depth_km: _Optional[float] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model", "fields", "height", "width", "samples", "steps", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    fields: _containers.RepeatedCompositeFieldContainer[ObservedField]
    height: int
    width: int
    samples: int
    steps: int
    seed: int
    def __init__(self, model: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[ObservedField, _Mapping]]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., samples: _Optional[int] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ReconstructedField(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("model", "model_version", "height", "width", "samples", "steps", "objective", "fields", "timings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    height: int
    width: int
    samples: int
    steps: int
    objective: str
    fields: _containers.RepeatedCompositeFieldContainer[ReconstructedField]
    timings: _seismag_pb2.Timings
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., samples: _Optional[int] = ..., steps: _Optional[int] = ..., objective: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[ReconstructedField, _Mapping]]] = ..., timings: _Optional[_Union[_seismag_pb2.Timings, _Mapping]] = ...) -> None: ...
