"""Infer, independent of any transport: the models of the current registry, ready to serve.

Every registry revision is compiled into one `ReadyModel` per model config (plan + loaded
runtimes) off the request path, then swapped in with one reference assignment. A request
keeps the `ReadyModel` it started with, so it is answered wholly by one model version even
while a new one is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from inferstack import metrics
from inferstack.core import limits
from inferstack.core.callers import Need, distinct, reads
from inferstack.core.errors import InferstackError, NotFoundError, UnavailableError
from inferstack.core.keys import KeyValues
from inferstack.core.modelconfig import Model
from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.executor import InferResult, ReadyModel, execute
from inferstack.inferflow.features import FeatureSource
from inferstack.inferflow.graph import ExecutionPlan, ModelStep, compile_plan
from inferstack.inferflow.inferencelog.base import InferenceLogger, InferenceRecord, Sampler
from inferstack.inferflow.recent import InteractionSource
from inferstack.inferflow.runtimes.base import ModelRuntime

log = logging.getLogger(__name__)
PARTS = ("fetch", "model", "expression", "other")  # how stages are summed for metrics
RUNTIME_GRACE = 30.0  # seconds an unused runtime stays open for requests still using it
RuntimeKey = tuple[object, ...]


@dataclass(frozen=True)
class BrokenModel:
    """A model config that could not be loaded on this server; requests get the reason."""

    version: int
    reason: str


def runtime_key(model: Model) -> RuntimeKey:
    if model.runtime == "onnx":
        return ("onnx", model.artifact, model.threads, model.input_name)
    endpoints = tuple(
        (e.address, e.model or model.name, e.version, e.weight) for e in model.endpoints
    )
    tensors = tuple(o.tensor for o in model.output_specs)
    return ("kserve", endpoints, model.input_name, model.timeout, tensors)


class RuntimeLoader:
    """Loads each distinct runtime once and shares it between model versions that use it."""

    def __init__(self, load_artifact: Callable[[str], bytes]) -> None:
        self._load_artifact = load_artifact  # blocking (file or ZooKeeper): run in a thread
        self._runtimes: dict[RuntimeKey, ModelRuntime] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def load(self, model: Model) -> ModelRuntime:
        key = runtime_key(model)
        runtime = self._runtimes.get(key)
        if runtime is None:
            runtime = await self._open(model)
            self._runtimes[key] = runtime
        return runtime

    async def _open(self, model: Model) -> ModelRuntime:
        if model.runtime == "onnx":
            from inferstack.inferflow.runtimes.onnx import OnnxRuntime

            assert model.artifact is not None  # set by `inferstack apply`
            data = await asyncio.to_thread(self._load_artifact, model.artifact)
            onnx = OnnxRuntime(model.name, data, threads=model.threads, input_name=model.input_name)
            onnx.warm()
            return onnx
        from inferstack.inferflow.runtimes.kserve import KServeRuntime
        from inferstack.inferflow.runtimes.weighted import WeightedRuntime

        tensors = tuple(dict.fromkeys(o.tensor for o in model.output_specs if o.tensor))
        remotes = [
            KServeRuntime(
                endpoint.address,
                endpoint.model or model.name,
                model_version=endpoint.version,
                input_name=model.input_name or "input-0",
                output_names=tensors,
                timeout=model.timeout,
            )
            for endpoint in model.endpoints
        ]
        for remote in remotes:
            # Learn the declared input when the endpoint is up; one that is down now is
            # still served (its calls answer UNAVAILABLE until it is back).
            try:
                await asyncio.wait_for(remote.check_ready(), model.timeout)
            except (InferstackError, TimeoutError) as exc:
                log.warning("model step '%s': %s", model.name, exc)
        if len(remotes) == 1:
            return remotes[0]
        weights = [endpoint.weight for endpoint in model.endpoints]
        return WeightedRuntime(list(zip(remotes, weights, strict=True)))

    def retain(self, keys: set[RuntimeKey]) -> None:
        """Close runtimes no ready model uses, after requests that still hold them are done."""
        unused = [self._runtimes.pop(key) for key in list(self._runtimes) if key not in keys]
        if unused:
            task = asyncio.get_running_loop().create_task(self._close_later(unused))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_later(runtimes: list[ModelRuntime]) -> None:
        await asyncio.sleep(RUNTIME_GRACE)
        for runtime in runtimes:
            await runtime.close()

    async def close(self) -> None:
        for runtime in self._runtimes.values():
            await runtime.close()
        self._runtimes.clear()


def width_problems(plan: ExecutionPlan, runtimes: Mapping[str, ModelRuntime]) -> list[str]:
    """A model whose declared input width differs from what the plan feeds it."""
    problems = []
    for step in plan.steps:
        if not isinstance(step, ModelStep):
            continue
        expected = getattr(runtimes[step.name], "input_width", None)
        if expected is not None and expected != step.width:
            problems.append(
                f"model '{step.name}' takes {expected} input columns; its inputs give "
                f"{step.width} ({', '.join(step.inputs)})"
            )
    return problems


class InferflowService:
    def __init__(
        self,
        source: FeatureSource,
        loader: RuntimeLoader,
        inference_log: InferenceLogger | None = None,
        recent: InteractionSource | None = None,
    ) -> None:
        self.source = source
        self.recent = recent
        self.loader = loader
        self.inference_log = inference_log
        self.models: dict[str, ReadyModel | BrokenModel] = {}
        self.revision = -1
        self._switch = asyncio.Lock()
        self._samplers: dict[tuple[str, float], Sampler] = {}

    async def use_registry(self, registry: Registry, catalog: Catalog) -> None:
        """Compile and load every model config of `registry`, then swap them in at once."""
        async with self._switch:
            if registry.revision <= self.revision:
                return
            models: dict[str, ReadyModel | BrokenModel] = {}
            keys: set[RuntimeKey] = set()
            for name, stored in registry.models.items():
                try:
                    plan = compile_plan(stored.definition, catalog, stored.version)
                    runtimes = {m.name: await self.loader.load(m) for m in stored.definition.models}
                    problems = width_problems(plan, runtimes)
                    if problems:
                        raise UnavailableError("; ".join(problems))
                    models[name] = ReadyModel(plan, runtimes)
                    keys |= {runtime_key(m) for m in stored.definition.models}
                except InferstackError as exc:
                    log.error("model '%s' v%d cannot serve: %s", name, stored.version, exc)
                    models[name] = BrokenModel(stored.version, str(exc))
            self.models = models  # one swap: requests in flight keep what they started with
            self.revision = registry.revision
            self.loader.retain(keys)

    def ready(self, model: str) -> ReadyModel:
        found = self.models.get(model)
        if found is None:
            known = ", ".join(sorted(self.models)) or "none applied"
            raise NotFoundError(f"model '{model}' not found (models: {known})")
        if isinstance(found, BrokenModel):
            raise UnavailableError(f"model '{model}' v{found.version} cannot serve: {found.reason}")
        return found

    def infer_needs(
        self, model: str, return_features: Sequence[str] = (), explain: bool = False
    ) -> Iterator[Need]:
        """What an Infer touches, for the caller's grants (docs/architecture.md, "Callers"):

        - read on the model: its scores;
        - read on the feature group of every feature value the answer carries (the model's
          response features and `return_features`);
        - read on every interaction type the model reads: its per-candidate outputs can tell
          them (a `match: product_id` count is 1 exactly for what the user ordered);
        - with `explain`, read on every feature group the model reads: the per-feature
          default counts tell which rows exist.

        The model's need comes first and alone (checked before the others are worked out),
        so a caller without it learns nothing of the model's plan."""
        yield reads("model", [model])
        limits.check(len(return_features), limits.MAX_RETURN_FEATURES, "return_features")
        ready = self.models.get(model)
        if not isinstance(ready, ReadyModel):
            return  # unknown or broken: the Infer itself answers that
        plan = ready.plan
        groups = [ref.group for ref in plan.response_features]
        for name in return_features:
            fetch, _, feature = name.partition(".")
            ref = plan.available.get(fetch, {}).get(feature)
            if ref is not None:  # an unknown one: the Infer answers NOT_FOUND
                groups.append(ref.group)
        if explain:
            groups += [group for _, group, _ in plan.reported]
        yield reads("feature_group", distinct(groups))
        yield reads("interaction_type", distinct(node.type for node in plan.interactions))

    async def infer(
        self,
        model: str,
        context: Mapping[str, KeyValues],
        return_features: Sequence[str] = (),
        request_id: str = "",
    ) -> tuple[str, InferResult]:
        """Score the candidates; returns the request id (generated if not given) and the result."""
        limits.check(len(return_features), limits.MAX_RETURN_FEATURES, "return_features")
        ready = self.ready(model)
        result = await execute(ready, self.source, context, return_features, self.recent)
        request_id = request_id or uuid.uuid4().hex
        _observe(result)
        self._log(ready, request_id, result)
        return request_id, result

    def _sampler(self, model: str, rate: float) -> Sampler:
        sampler = self._samplers.get((model, rate))
        if sampler is None:
            sampler = self._samplers[(model, rate)] = Sampler(rate)
        return sampler

    def _log(self, ready: ReadyModel, request_id: str, result: InferResult) -> None:
        logger = self.inference_log
        rate = ready.plan.definition.logging.sample_rate
        if logger is None or rate <= 0 or not self._sampler(ready.plan.model, rate).sample():
            return
        logger.offer(
            InferenceRecord(
                request_id=request_id,
                model=result.model,
                version=result.version,
                timestamp=time.time(),
                context={
                    name: values.tolist()
                    for name, values in result.context.items()
                    if name != ready.plan.candidates.name
                },
                candidates=result.candidates,
                feature_names=list(ready.plan.matrix_columns),
                features=result.matrix,
                outputs=result.outputs,
            )
        )

    async def close(self) -> None:
        await self.loader.close()
        await self.source.close()
        if self.inference_log is not None:
            await asyncio.to_thread(self.inference_log.close)


def _observe(result: InferResult) -> None:
    parts = dict.fromkeys(PARTS, 0.0)
    for stage, seconds in result.timings:
        kind = stage.partition(" ")[0]
        parts[kind if kind in parts else "other"] += seconds
    for part, seconds in parts.items():
        metrics.INFER_SECONDS.labels(result.model, part).observe(seconds)
    by_fetch: dict[str, int] = {}
    for feature, rows in result.defaults.items():
        fetch = feature.partition(".")[0]
        by_fetch[fetch] = max(rows, by_fetch.get(fetch, 0))
    for fetch, rows in by_fetch.items():
        if rows:
            metrics.INFER_DEFAULT_ROWS.labels(result.model, fetch).inc(rows)
