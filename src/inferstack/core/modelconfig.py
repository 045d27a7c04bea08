"""Model configs users write: what inferflow fetches, which models it calls, what it returns.

A model config is the unit callers name ("ranker"). It declares the context a caller sends,
the feature fetches (entity + key expression + features), the models (ONNX files or remote
Open Inference Protocol endpoints) and expressions over their outputs, and the response.
Nobody writes graph edges: `inferflow.graph` infers them from the references.

References are dotted names:
    context.user_id          a context input (a candidate list is one value per row)
    product.category_id      feature `category_id` of the fetch named `product`
    pctr                     an output of a model, or an expression
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from inferstack.core.fields import NAME_PATTERN, FrozenModel, Name, Seconds, TypeField
from inferstack.core.types import KEY_TYPES, FeatureType

REFERENCE_PATTERN = r"^[a-z][a-z0-9_]{0,62}(\.[a-z0-9_*]{1,63}){0,2}$"
Reference = Annotated[str, Field(pattern=REFERENCE_PATTERN)]
DEFAULT_MAX_ROWS = 1_000


class ContextInput(FrozenModel):
    """A value the caller sends: a scalar broadcast to every row, or the candidate list."""

    name: Name
    type: TypeField
    candidates: bool = False  # the one list that defines the rows
    max_rows: int = Field(DEFAULT_MAX_ROWS, ge=1, le=100_000)  # for the candidate list

    @field_validator("type")
    @classmethod
    def _key_type(cls, value: FeatureType) -> FeatureType:
        if str(value) not in KEY_TYPES:
            raise ValueError(f"context type must be one of {', '.join(KEY_TYPES)}, got {value}")
        return value


class Fetch(FrozenModel):
    """Features of one entity, keyed by context values or features of earlier fetches."""

    name: Name
    entity: Name
    keys: list[Reference] = Field(min_length=1, max_length=8)
    features: list[str] = Field(min_length=1)  # "group", "group.*" or "group.feature"


class Output(FrozenModel):
    """One named output of a model: a tensor, or one column of a 2-D tensor."""

    name: Name
    tensor: str | None = None  # default: the model's outputs in order, one name each
    index: int | None = Field(None, ge=0)  # column of a (rows, k) tensor; default: 0


class Endpoint(FrozenModel):
    """One Open Inference Protocol (KServe v2) gRPC endpoint serving the model."""

    address: str  # host:port
    model: str | None = None  # the served model's name; default: the model step's name
    version: str = ""
    weight: float = Field(1.0, gt=0)  # share of calls in an A/B split


class Model(FrozenModel):
    """A model called on the feature matrix: ONNX in process or a remote endpoint."""

    name: Name
    runtime: Literal["onnx", "kserve"]
    path: str | None = None  # onnx: the file, relative to the YAML file that names it
    artifact: str | None = None  # onnx: sha256 of the file, set by `inferstack apply`
    endpoints: list[Endpoint] = []  # kserve
    input_name: str | None = None  # the tensor to feed; default: the model's only input
    inputs: list[Reference] = Field(min_length=1)
    outputs: list[Name | Output] = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"
    max_rows: int = Field(1_024, ge=1)  # rows per call; larger batches are split
    timeout: Seconds = 1.0  # per call, including the split parts of one batch
    threads: int = Field(1, ge=1, le=64)  # onnx intra-op threads

    @field_validator("outputs")
    @classmethod
    def _named_outputs(cls, outputs: list[str | Output]) -> list[str | Output]:
        names = [o if isinstance(o, str) else o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError("output names must be unique")
        return outputs

    @model_validator(mode="after")
    def _runtime_fields(self) -> Model:
        if self.runtime == "onnx":
            if self.path is None and self.artifact is None:
                raise ValueError("an onnx model needs `path`: the .onnx file")
            if self.endpoints:
                raise ValueError("`endpoints` are for kserve models; an onnx model has `path`")
        elif not self.endpoints:
            raise ValueError("a kserve model needs at least one entry in `endpoints`")
        elif self.path is not None:
            raise ValueError("`path` is for onnx models; a kserve model has `endpoints`")
        return self

    @property
    def output_specs(self) -> list[Output]:
        return [Output(name=o) if isinstance(o, str) else o for o in self.outputs]


class InteractionFeature(FrozenModel):
    """One number per candidate from the user's recent events of one type.

    Without `match`: over all the events (the same for every candidate). With `match` and
    `equals`: over the events whose field `match` (the item key or an attribute) equals the
    candidate's value of `equals`, e.g. match: category_id, equals: product.category_id.
    """

    name: Name
    aggregate: Literal["count", "recency"] = "count"  # recency: seconds since the newest one
    match: Name | None = None
    equals: Reference | None = None

    @model_validator(mode="after")
    def _match_needs_equals(self) -> InteractionFeature:
        if (self.match is None) != (self.equals is None):
            raise ValueError("`match` (an event field) and `equals` (a reference) go together")
        return self


class InteractionFetch(FrozenModel):
    """The user's recent events of one interaction type, summarised into features."""

    name: Name
    type: Name  # an interaction type
    user: Reference  # e.g. context.user_id
    window: Seconds | None = None  # only events newer than this; default: all kept
    last: int = Field(200, ge=1, le=10_000)  # at most the newest this many events
    features: list[InteractionFeature] = Field(min_length=1)


class Response(FrozenModel):
    outputs: list[Reference] = Field(min_length=1)  # model outputs and expressions
    features: list[Reference] = []  # fetch.feature, returned in their own types


class InferenceLogging(FrozenModel):
    sample_rate: float = Field(0.0, ge=0, le=1)


class ModelConfig(FrozenModel):
    name: Name
    description: str = ""
    context: list[ContextInput] = Field(min_length=1)
    fetches: list[Fetch] = []
    interactions: list[InteractionFetch] = []
    models: list[Model] = []
    expressions: dict[str, str] = {}  # name -> expression, e.g. score: pctr * pcvr ** 0.5
    response: Response
    logging: InferenceLogging = InferenceLogging()

    @field_validator("context")
    @classmethod
    def _one_candidate_list(cls, context: list[ContextInput]) -> list[ContextInput]:
        lists = [c.name for c in context if c.candidates]
        if len(lists) != 1:
            raise ValueError(
                "exactly one context input must be the candidate list (`candidates: true`)"
                + (f"; found {', '.join(lists)}" if lists else "")
            )
        return context

    @field_validator("expressions")
    @classmethod
    def _expression_names(cls, expressions: dict[str, str]) -> dict[str, str]:
        for name in expressions:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"expression name '{name}' must match {NAME_PATTERN}")
        return expressions

    @property
    def candidates(self) -> ContextInput:
        return next(c for c in self.context if c.candidates)
