"""Applying definitions (server/apply.py) and the CLI that prints it (cli/apply.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inferstack.cli.main import app
from inferstack.configstore.base import ConfigConflictError
from inferstack.core.errors import DefinitionError, UnavailableError
from inferstack.core.registry import Registry
from inferstack.kv.lmdb import LmdbStorage
from inferstack.server import apply as apply_module
from inferstack.server.apply import apply_definitions
from inferstack.server.components import open_config_store, prepare_storage
from inferstack.server.settings import ServeSettings

DEFS = """\
entities:
  - name: user
    keys: [{name: user_id, type: int64}]
feature_groups:
  - name: profile
    entity: user
    features:
      - {name: age, type: int32, default: -1}
"""


class CountingStore:
    """A config store that counts its closes (everything else goes to the real one)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self._store.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[CountingStore]:
    """Every config store an apply opens, in order."""
    stores: list[CountingStore] = []
    real = open_config_store

    def counting(settings: ServeSettings) -> Any:
        stores.append(CountingStore(real(settings)))
        return stores[-1]

    monkeypatch.setattr(apply_module, "open_config_store", counting)
    return stores


@pytest.fixture
def failing_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    async def prepare(self: LmdbStorage, registry: Registry) -> None:
        raise UnavailableError("lmdb: no space left on device")

    monkeypatch.setattr(LmdbStorage, "prepare", prepare)


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    path = tmp_path / "defs.yaml"
    path.write_text(DEFS)
    return path


def test_apply_returns_the_changes_and_stores_them(
    tmp_path: Path, defs: Path, opened: list[CountingStore]
) -> None:
    settings = ServeSettings(data_dir=tmp_path / "d")
    dry = apply_definitions(settings, [defs], dry_run=True)
    assert [str(c) for c in dry.changes] == ["+ entity user", "+ feature group profile (schema v1)"]
    assert (dry.revision, dry.previous_revision, dry.applied, dry.dry_run) == (1, 0, False, True)

    done = apply_definitions(settings, [defs])
    assert (done.changes, done.revision, done.previous_revision) == (dry.changes, 1, 0)
    assert done.applied and not done.empty
    assert sorted(done.registry.feature_groups) == ["profile"]

    again = apply_definitions(settings, [defs])
    assert (again.changes, again.revision, again.applied, again.empty) == ([], 1, False, True)
    assert [store.closes for store in opened] == [1, 1, 1]


@pytest.mark.usefixtures("failing_prepare")
def test_apply_closes_the_store_and_saves_nothing_when_a_step_fails(
    tmp_path: Path, defs: Path, opened: list[CountingStore]
) -> None:
    settings = ServeSettings(data_dir=tmp_path / "d")
    with pytest.raises(UnavailableError, match="no space left"):
        apply_definitions(settings, [defs])
    assert [store.closes for store in opened] == [1]
    assert apply_definitions(settings, [defs], dry_run=True).previous_revision == 0

    defs.write_text(DEFS.replace("int32", "int33"))
    with pytest.raises(DefinitionError, match="int33"):
        apply_definitions(settings, [defs])
    assert [store.closes for store in opened] == [1, 1, 1]


def test_apply_refuses_to_save_over_another_apply(
    tmp_path: Path, defs: Path, opened: list[CountingStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServeSettings(data_dir=tmp_path / "d")
    other = tmp_path / "other.yaml"
    other.write_text(DEFS.replace("profile", "account"))
    real = prepare_storage
    raced: list[bool] = []

    async def racing(settings: ServeSettings, registry: Registry) -> None:
        if not raced:  # another apply saves between this one's load and its save
            raced.append(True)
            await asyncio.to_thread(apply_definitions, settings, [other])
        await real(settings, registry)

    monkeypatch.setattr(apply_module, "prepare_storage", racing)
    with pytest.raises(ConfigConflictError):
        apply_definitions(settings, [defs])
    assert [store.closes for store in opened] == [1, 1]  # this apply's and the other's
    after = apply_definitions(settings, [defs], dry_run=True)
    assert after.previous_revision == 1 and [str(c) for c in after.changes] == [
        "+ feature group profile (schema v1)"
    ]


@pytest.mark.usefixtures("failing_prepare")
def test_cli_apply_fails_in_one_line_and_closes_the_store(
    tmp_path: Path, defs: Path, opened: list[CountingStore]
) -> None:
    result = CliRunner().invoke(app, ["apply", "-f", str(defs), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: lmdb: no space left on device"]
    assert [store.closes for store in opened] == [1]


def test_cli_apply_prints_the_diff_json_and_problems(tmp_path: Path, defs: Path) -> None:
    runner = CliRunner()
    base = ["apply", "-f", str(defs), "--data-dir", str(tmp_path)]
    dry = runner.invoke(app, [*base, "--json", "--dry-run"])
    assert dry.exit_code == 0
    assert json.loads(dry.stdout) == {
        "changes": [
            {"action": "create", "kind": "entity", "name": "user", "details": []},
            {
                "action": "create",
                "kind": "feature group",
                "name": "profile",
                "details": ["schema v1"],
            },
        ],
        "revision": 1,
        "applied": False,
    }
    assert runner.invoke(app, [*base, "--dry-run"]).stdout.splitlines() == [
        "+ entity user",
        "+ feature group profile (schema v1)",
        "Dry run: 2 change(s) not applied.",
    ]
    assert runner.invoke(app, base).stdout.splitlines()[-1] == "Applied revision 1."
    assert runner.invoke(app, base).stdout.strip() == "No changes."
    applied = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert applied == {"changes": [], "revision": 1, "applied": False}
    defs.write_text(DEFS.replace("int32", "int33"))
    bad = runner.invoke(app, base)
    assert bad.exit_code == 1
    assert bad.stderr.startswith(f"error: {defs}:8:") and "int33" in bad.stderr
