"""What `inferstack apply` checks about model configs before anything is stored.

Model files are read from the paths the YAML names (relative to that YAML file), stored in
the config store by their sha256, and the config keeps that digest (`artifact`): a changed
file is a new model version, and every server loads exactly the bytes that were checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from inferstack.core.errors import InferstackError, located
from inferstack.core.loading import Definitions, ModelSource
from inferstack.core.modelconfig import ModelConfig
from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.graph import GraphError, ModelStep, compile_plan

Artifacts = dict[str, bytes]  # sha256 -> file contents


def read_artifacts(definitions: Definitions) -> tuple[list[ModelConfig], Artifacts, list[str]]:
    """Each ONNX model's file read and digested; the configs come back with `artifact` set."""
    configs: list[ModelConfig] = []
    artifacts: Artifacts = {}
    problems: list[str] = []
    for config in definitions.models:
        source = definitions.model_sources[config.name]
        steps = []
        for index, model in enumerate(config.models):
            if model.runtime != "onnx" or model.path is None:
                steps.append(model)
                continue
            path = Path(model.path)
            if not path.is_absolute():
                path = source.directory / path
            try:
                data = path.read_bytes()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                problems.append(source.problem(("models", index, "path"), f"{path}: {reason}"))
                steps.append(model)
                continue
            digest = hashlib.sha256(data).hexdigest()
            artifacts[digest] = data
            steps.append(model.model_copy(update={"artifact": digest}))
        configs.append(config.model_copy(update={"models": steps}))
    return configs, artifacts, problems


def check_models(
    registry: Registry, sources: Mapping[str, ModelSource], artifacts: Artifacts
) -> list[str]:
    """Every model config of the registry-to-be compiles against its feature definitions,
    and every model file given in this apply takes as many columns as its inputs give."""
    catalog = Catalog(registry)
    problems: list[str] = []
    for name, stored in registry.models.items():
        source = sources.get(name)

        def problem(
            location: tuple[str | int, ...],
            message: str,
            name: str = name,
            source: ModelSource | None = source,
        ) -> str:
            if source is not None:
                return source.problem(location, message)
            path = ".".join(str(part) for part in location)
            return located("<stored definitions>", None, f"model '{name}': {path}: {message}")

        try:
            plan = compile_plan(stored.definition, catalog, stored.version)
        except GraphError as exc:
            problems.append(problem(exc.location, exc.message))
            continue
        for index, model in enumerate(stored.definition.models):
            data = artifacts.get(model.artifact or "")
            if data is None:
                continue  # stored earlier and checked then
            try:
                from inferstack.inferflow.runtimes.onnx import OnnxRuntime  # an extra

                runtime = OnnxRuntime(model.name, data, input_name=model.input_name)
            except InferstackError as exc:
                problems.append(problem(("models", index, "path"), str(exc)))
                continue
            step = next(s for s in plan.steps if isinstance(s, ModelStep) and s.name == model.name)
            if runtime.input_width is not None and runtime.input_width != step.width:
                problems.append(
                    problem(
                        ("models", index, "inputs"),
                        f"model '{model.name}' takes {runtime.input_width} columns (ONNX input "
                        f"'{runtime.input_name}'); these inputs give {step.width}",
                    )
                )
    return problems
