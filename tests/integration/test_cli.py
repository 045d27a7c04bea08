"""The CLI as a user runs it: exit codes, one-line reasons, --json output."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from tests.servers import inferstack, start_server

DEFS = """\
entities:
  - name: user
    keys: [{name: user_id, type: int64}]
feature_groups:
  - name: profile
    entity: user
    features:
      - {name: age, type: int32, default: -1}
      - {name: city, type: string}
"""


def test_apply_shows_the_diff_and_is_idempotent(tmp_path: Path) -> None:
    defs = tmp_path / "defs.yaml"
    defs.write_text(DEFS)
    first = inferstack("apply", "-f", str(defs), data_dir=tmp_path / "d")
    assert "+ feature group profile (schema v1)" in first.stdout
    assert "Applied revision 1." in first.stdout
    again = inferstack("apply", "-f", str(defs), "--json", data_dir=tmp_path / "d")
    assert json.loads(again.stdout) == {"changes": [], "revision": 1, "applied": False}
    defs.write_text(DEFS + "      - {name: score, type: float64}\n")
    dry = inferstack("apply", "-f", str(defs), "--dry-run", data_dir=tmp_path / "d")
    assert "schema v1 -> v2; +feature score" in dry.stdout and "not applied" in dry.stdout
    assert (
        json.loads(
            inferstack(
                "apply", "-f", str(defs), "--json", "--dry-run", data_dir=tmp_path / "d"
            ).stdout
        )["revision"]
        == 2
    )


def test_apply_errors_name_file_and_line_and_store_nothing(tmp_path: Path) -> None:
    defs = tmp_path / "defs.yaml"
    defs.write_text(DEFS.replace("type: int32", "type: int33"))
    result = inferstack("apply", "-f", str(defs), data_dir=tmp_path / "d", check=False)
    assert result.returncode == 1
    assert f"{defs}:8:" in result.stderr and "int33" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "config" / "registry.json").exists()


def test_ingest_reports_rejected_rows_and_get_prints_json(tmp_path: Path) -> None:
    data = tmp_path / "d"
    defs = tmp_path / "defs.yaml"
    defs.write_text(DEFS)
    inferstack("apply", "-f", str(defs), data_dir=data)
    rows = tmp_path / "rows.csv"
    rows.write_text("user_id,age,city\n1,30,Oslo\n2,abc,Rome\n3,41,Zürich\n")
    result = inferstack("ingest", "-g", "profile", str(rows), "--json", data_dir=data, check=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["rows_written"], report["rows_rejected"]) == (2, 1)
    assert report["rejections"][0]["row"] == 2 and "'abc'" in report["rejections"][0]["reason"]

    missing = inferstack("ingest", "-g", "nope", str(rows), data_dir=data, check=False)
    assert missing.returncode == 1 and "feature group 'nope' not found" in missing.stderr

    server = start_server(data, workers=1)
    try:
        got = inferstack(
            "get",
            "user",
            "user_id=3",
            "user_id=2",
            "--json",
            "-t",
            server.grpc_target,
            data_dir=data,
        )
        assert json.loads(got.stdout) == [
            {
                "user_id": "3",
                "profile:status": "found",
                "profile.age": 41,
                "profile.city": "Zürich",
            },
            {"user_id": "2", "profile:status": "missing", "profile.age": -1, "profile.city": ""},
        ]
        table = inferstack("get", "user", "user_id=3", "-t", server.grpc_target, data_dir=data)
        assert "Zürich" in table.stdout
        bad = inferstack(
            "get", "user", "user_id=x", "-t", server.grpc_target, data_dir=data, check=False
        )
        assert bad.returncode == 1
        assert bad.stderr.strip().splitlines() == [
            "error: INVALID_ARGUMENT: key 'user.user_id' is an integer, got 'x' "
            "(ASCII digits, an optional minus sign)"
        ]
    finally:
        assert server.stop() == 0


def test_serve_on_a_taken_port_exits_with_a_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = inferstack(
            "serve", "--port", str(port), "--http-port", "-1", data_dir=tmp_path, check=False
        )
    assert result.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_crashed_worker_is_replaced_and_serving_goes_on(tmp_path: Path) -> None:
    defs = tmp_path / "defs.yaml"
    defs.write_text(DEFS)
    inferstack("apply", "-f", str(defs), data_dir=tmp_path)
    server = start_server(tmp_path, workers=2)
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")

        def workers() -> set[int]:
            found = set()
            for pid in map(int, children.read_text().split()):
                try:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes()
                except FileNotFoundError:  # exited between the two reads
                    continue
                if b"resource_tracker" not in command:
                    found.add(pid)
            return found

        before = workers()
        assert len(before) == 2
        victim = next(iter(before))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (len(workers()) == 2 and victim not in workers()):
            assert time.monotonic() < deadline, "the crashed worker was not replaced"
            time.sleep(0.2)
        got = inferstack(
            "get", "user", "user_id=1", "--json", "-t", server.grpc_target, data_dir=tmp_path
        )
        assert json.loads(got.stdout)[0]["profile:status"] == "missing"
    finally:
        assert server.stop() == 0


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "d", workers=2)
    children = [
        int(pid)
        for pid in Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        .read_text()
        .split()
    ]
    assert len(children) >= 2  # the workers (and the multiprocessing resource tracker)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived the supervisor"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False
