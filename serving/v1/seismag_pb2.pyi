from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawTrace(_message.Message):
    __slots__ = ("network", "station", "location", "channel", "sampling_rate", "starttime", "samples")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    STARTTIME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    network: str
    station: str
    location: str
    channel: str
    sampling_rate: float
    starttime: float
    samples: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, network: _Optional[str] = ..., station: _Optional[str] = ..., location: _Optional[str] = ..., channel: _Optional[str] = ..., sampling_rate: _Optional[float] = ..., starttime: _Optional[float] = ..., samples: _Optional[_Iterable[float]] = ...) -> None: ...

class RawTraces(_message.Message):
    __slots__ = ("traces",)
    TRACES_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[RawTrace]
    def __init__(self, traces: _Optional[_Iterable[_Union[RawTrace, _Mapping]]] = ...) -> None: ...

class PPick(_message.Message):
    __slots__ = ("station_id", "time")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    time: float
    def __init__(self, station_id: _Optional[str] = ..., time: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("miniseed", "raw", "stationxml", "p_picks", "model", "series_interval", "input_units")
    MINISEED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    STATIONXML_FIELD_NUMBER: _ClassVar[int]
    P_PICKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERIES_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    INPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    miniseed: bytes
    raw: RawTraces
    stationxml: bytes
    p_picks: _containers.RepeatedCompositeFieldContainer[PPick]
    model: str
    series_interval: float
    input_units: str
    def __init__(self, miniseed: _Optional[bytes] = ..., raw: _Optional[_Union[RawTraces, _Mapping]] = ..., stationxml: _Optional[bytes] = ..., p_picks: _Optional[_Iterable[_Union[PPick, _Mapping]]] = ..., model: _Optional[str] = ..., series_interval: _Optional[float] = ..., input_units: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("preprocess_ms", "queue_ms", "compute_ms", "total_ms")
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    preprocess_ms: float
    queue_ms: float
    compute_ms: float
    total_ms: float
    def __init__(self, preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class MagnitudeSeries(_message.Message):
    __slots__ = ("start", "interval", "values", "sigmas")
    START_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SIGMAS_FIELD_NUMBER: _ClassVar[int]
    start: float
    interval: float
    values: _containers.RepeatedScalarFieldContainer[float]
    sigmas: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, start: _Optional[float] = ..., interval: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ..., sigmas: _Optional[_Iterable[float]] = ...) -> None: ...

class StationMagnitude(_message.Message):
    __slots__ = ("network", "station", "location", "magnitude", "derivation", "series", "onset", "has_onset", "onset_source", "model", "model_version", "missing_components", "timings", "onset_confidence", "magnitude_sigma", "has_sigma", "warnings")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    DERIVATION_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    ONSET_FIELD_NUMBER: _ClassVar[int]
    HAS_ONSET_FIELD_NUMBER: _ClassVar[int]
    ONSET_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MISSING_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ONSET_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    HAS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    network: str
    station: str
    location: str
    magnitude: float
    derivation: str
    series: MagnitudeSeries
    onset: float
    has_onset: bool
    onset_source: str
    model: str
    model_version: str
    missing_components: _containers.RepeatedScalarFieldContainer[str]
    timings: Timings
    onset_confidence: float
    magnitude_sigma: float
    has_sigma: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[str] = ..., station: _Optional[str] = ..., location: _Optional[str] = ..., magnitude: _Optional[float] = ..., derivation: _Optional[str] = ..., series: _Optional[_Union[MagnitudeSeries, _Mapping]] = ..., onset: _Optional[float] = ..., has_onset: bool = ..., onset_source: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., missing_components: _Optional[_Iterable[str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., onset_confidence: _Optional[float] = ..., magnitude_sigma: _Optional[float] = ..., has_sigma: bool = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class EventMagnitude(_message.Message):
    __slots__ = ("magnitude", "magnitude_sigma", "has_sigma", "first_onset", "stations", "rejected", "not_associated", "series", "station_counts", "method", "corrections")
    class CorrectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    HAS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    FIRST_ONSET_FIELD_NUMBER: _ClassVar[int]
    STATIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    NOT_ASSOCIATED_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    STATION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    magnitude: float
    magnitude_sigma: float
    has_sigma: bool
    first_onset: float
    stations: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedScalarFieldContainer[str]
    not_associated: _containers.RepeatedScalarFieldContainer[str]
    series: MagnitudeSeries
    station_counts: _containers.RepeatedScalarFieldContainer[int]
    method: str
    corrections: _containers.ScalarMap[str, float]
    def __init__(self, magnitude: _Optional[float] = ..., magnitude_sigma: _Optional[float] = ..., has_sigma: bool = ..., first_onset: _Optional[float] = ..., stations: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[str]] = ..., not_associated: _Optional[_Iterable[str]] = ..., series: _Optional[_Union[MagnitudeSeries, _Mapping]] = ..., station_counts: _Optional[_Iterable[int]] = ..., method: _Optional[str] = ..., corrections: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("results", "event", "has_event")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HAS_EVENT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StationMagnitude]
    event: EventMagnitude
    has_event: bool
    def __init__(self, results: _Optional[_Iterable[_Union[StationMagnitude, _Mapping]]] = ..., event: _Optional[_Union[EventMagnitude, _Mapping]] = ..., has_event: bool = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model", "hop_seconds", "stationxml", "input_units", "events", "event_id", "every_window")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATIONXML_FIELD_NUMBER: _ClassVar[int]
    INPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVERY_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    hop_seconds: float
    stationxml: bytes
    input_units: str
    events: bool
    event_id: str
    every_window: bool
    def __init__(self, model: _Optional[str] = ..., hop_seconds: _Optional[float] = ..., stationxml: _Optional[bytes] = ..., input_units: _Optional[str] = ..., events: bool = ..., event_id: _Optional[str] = ..., every_window: bool = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "miniseed", "raw_chunk", "raw_chunks", "pick")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MINISEED_FIELD_NUMBER: _ClassVar[int]
    RAW_CHUNK_FIELD_NUMBER: _ClassVar[int]
    RAW_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PICK_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    miniseed: bytes
    raw_chunk: RawTrace
    raw_chunks: RawTraces
    pick: PPick
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., miniseed: _Optional[bytes] = ..., raw_chunk: _Optional[_Union[RawTrace, _Mapping]] = ..., raw_chunks: _Optional[_Union[RawTraces, _Mapping]] = ..., pick: _Optional[_Union[PPick, _Mapping]] = ...) -> None: ...

class StreamUpdate(_message.Message):
    __slots__ = ("network", "station", "location", "time", "magnitude", "onset", "has_onset", "model", "lag_seconds", "timings", "onset_source", "onset_confidence", "magnitude_sigma", "has_sigma", "warnings")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    ONSET_FIELD_NUMBER: _ClassVar[int]
    HAS_ONSET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ONSET_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ONSET_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    HAS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    network: str
    station: str
    location: str
    time: float
    magnitude: float
    onset: float
    has_onset: bool
    model: str
    lag_seconds: float
    timings: Timings
    onset_source: str
    onset_confidence: float
    magnitude_sigma: float
    has_sigma: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[str] = ..., station: _Optional[str] = ..., location: _Optional[str] = ..., time: _Optional[float] = ..., magnitude: _Optional[float] = ..., onset: _Optional[float] = ..., has_onset: bool = ..., model: _Optional[str] = ..., lag_seconds: _Optional[float] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., onset_source: _Optional[str] = ..., onset_confidence: _Optional[float] = ..., magnitude_sigma: _Optional[float] = ..., has_sigma: bool = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class EventUpdate(_message.Message):
    __slots__ = ("event_id", "time", "first_onset", "magnitude", "magnitude_sigma", "has_sigma", "stations", "rejected")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FIRST_ONSET_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    HAS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    STATIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    time: float
    first_onset: float
    magnitude: float
    magnitude_sigma: float
    has_sigma: bool
    stations: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., time: _Optional[float] = ..., first_onset: _Optional[float] = ..., magnitude: _Optional[float] = ..., magnitude_sigma: _Optional[float] = ..., has_sigma: bool = ..., stations: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamUpdates(_message.Message):
    __slots__ = ("updates", "events")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[StreamUpdate]
    events: _containers.RepeatedCompositeFieldContainer[EventUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[StreamUpdate, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[EventUpdate, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "card_json", "weights", "is_default", "inputs", "outputs", "runtime_json", "server_config_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_JSON_FIELD_NUMBER: _ClassVar[int]
    SERVER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    card_json: str
    weights: str
    is_default: bool
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    runtime_json: str
    server_config_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., card_json: _Optional[str] = ..., weights: _Optional[str] = ..., is_default: bool = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., runtime_json: _Optional[str] = ..., server_config_json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model", "server_config_json", "encoders", "field_models")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    FIELD_MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    server_config_json: str
    encoders: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    field_models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ..., server_config_json: _Optional[str] = ..., encoders: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., field_models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("encoder", "miniseed", "raw", "stationxml", "input_units")
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    MINISEED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    STATIONXML_FIELD_NUMBER: _ClassVar[int]
    INPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    encoder: str
    miniseed: bytes
    raw: RawTraces
    stationxml: bytes
    input_units: str
    def __init__(self, encoder: _Optional[str] = ..., miniseed: _Optional[bytes] = ..., raw: _Optional[_Union[RawTraces, _Mapping]] = ..., stationxml: _Optional[bytes] = ..., input_units: _Optional[str] = ...) -> None: ...

class StationEmbedding(_message.Message):
    __slots__ = ("network", "station", "location", "window_start", "step_seconds", "shape", "values", "window_end", "missing_components", "warnings", "timings")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    MISSING_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    network: str
    station: str
    location: str
    window_start: float
    step_seconds: float
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    window_end: float
    missing_components: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    timings: Timings
    def __init__(self, network: _Optional[str] = ..., station: _Optional[str] = ..., location: _Optional[str] = ..., window_start: _Optional[float] = ..., step_seconds: _Optional[float] = ..., shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., window_end: _Optional[float] = ..., missing_components: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("encoder", "encoder_version", "embeddings")
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    encoder: str
    encoder_version: str
    embeddings: _containers.RepeatedCompositeFieldContainer[StationEmbedding]
    def __init__(self, encoder: _Optional[str] = ..., encoder_version: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[StationEmbedding, _Mapping]]] = ...) -> None: ...
