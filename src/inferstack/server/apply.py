"""Apply definitions: the flow behind `inferstack apply`, callable by any face (CLI, an admin API).

load the files (against the stored registry) -> plan the new registry -> check the model
configs and files (inferflow/validation.py) -> store the model files as blobs -> create the
tables the new registry needs -> save it (compare-and-set on the revision read at the start).

Model files and tables come before the save: a registry never names a file servers cannot
fetch, and servers never race each other to create a table it needs. Nothing is stored when
any definition or model is invalid, and a dry run stores nothing at all. Every store opened
here is closed on every way out, failures included.

Blocking (the config store's calls are): a server calls it in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inferstack.core.errors import DefinitionError
from inferstack.core.loading import load_definitions
from inferstack.core.registry import Change, Registry, plan
from inferstack.inferflow.validation import check_models, read_artifacts
from inferstack.server.components import open_config_store, prepare_storage
from inferstack.server.settings import ServeSettings


@dataclass(frozen=True)
class ApplyResult:
    changes: list[Change]  # empty: the files match what is stored
    registry: Registry  # the registry after the apply (or as it would be, on a dry run)
    previous_revision: int  # the revision the plan was made against
    dry_run: bool

    @property
    def revision(self) -> int:
        """The new registry's revision (the current one when nothing changed)."""
        return self.registry.revision

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def applied(self) -> bool:
        """Whether this call stored a new registry."""
        return bool(self.changes) and not self.dry_run


def apply_definitions(
    settings: ServeSettings,
    files: Sequence[Path],
    *,
    dry_run: bool = False,
    prune: bool = False,
) -> ApplyResult:
    """Validate definitions and model configs from `files` (YAML files or directories of
    them) against the stored registry and, unless `dry_run` or nothing changed, store them.

    `prune` deletes stored definitions missing from the files. Raises DefinitionError with
    every problem (file:line: reason) when a definition or model is invalid,
    ConfigConflictError when another apply saved in between, and the adapters' errors
    (UnavailableError...) when a system does not answer; nothing is saved then.
    """
    store = open_config_store(settings)
    try:
        current = store.registry.load()
        definitions = load_definitions(list(files), current)
        models, artifacts, problems = read_artifacts(definitions)
        result = plan(
            current,
            definitions.entities,
            definitions.feature_groups,
            models,
            definitions.interaction_types,
            prune=prune,
        )
        problems += check_models(result.registry, definitions.model_sources, artifacts)
        if problems:
            raise DefinitionError(problems)
        if not result.empty and not dry_run:
            for data in artifacts.values():
                store.blobs.put(data)
            asyncio.run(prepare_storage(settings, result.registry))
            store.registry.save(result.registry, expected_revision=current.revision)
    finally:
        store.close()
    return ApplyResult(result.changes, result.registry, current.revision, dry_run)
