"""`inferstack doctor` as a user runs it: embedded and distributed deployments, broken ones,
a running server's ports; exit code 1 exactly when a check failed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest

from inferstack.proto.kserve.v2 import grpc_service_pb2 as pb
from inferstack.proto.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from inferstack.sampledata.generate import generate
from inferstack.server.supervisor import free_port
from tests.conftest import ROOT
from tests.integration.test_tls import issue, make_ca, start_tls_server, stop
from tests.servers import RunningServer, inferstack, load_sample, start_server

DEPLOY = str(ROOT / "deploy" / "distributed.yaml")


def doctor(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Exit code and the --json results by check name."""
    result = inferstack("doctor", "--json", *args, data_dir=data_dir, env=env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    checks = json.loads(result.stdout)
    assert all(set(c) == {"check", "state", "detail", "fix"} for c in checks)
    return result.returncode, {c["check"]: c for c in checks}


def states(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: check["state"] for name, check in checks.items()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate(out, scale=0.002)
    return out


@pytest.fixture(scope="module")
def embedded(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("embedded")
    load_sample(sample, data)
    return data


def test_an_embedded_deployment_after_apply_and_ingest_is_all_ok(embedded: Path) -> None:
    code, checks = doctor(data_dir=embedded)
    assert code == 0
    assert states(checks) == {
        "config store": "ok",
        "storage": "ok",
        "feature group tables": "ok",
        "interaction type tables": "ok",
        "free disk": "ok",
    }
    assert "revision 1: 3 entities, 3 feature groups" in checks["config store"]["detail"]
    assert "each of the 3 feature groups" in checks["feature group tables"]["detail"]
    types = checks["interaction type tables"]["detail"]
    assert "interactions/cold" in types and "each of the 5 interaction types" in types
    assert all(check["fix"] == "" for check in checks.values())

    text = inferstack("doctor", data_dir=embedded)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert any(line.startswith("feature group tables") and " ok " in line for line in lines)


def test_a_missing_group_database_fails_naming_it_with_the_fix(
    sample: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    inferstack("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=data)
    environment = lmdb.open(str(data / "lmdb"), max_dbs=16)
    with environment.begin(write=True) as txn:
        txn.drop(environment.open_db(b"product_stats", txn=txn, create=False), delete=True)
    environment.close()

    code, checks = doctor(data_dir=data)
    assert code == 1
    tables = checks["feature group tables"]
    assert tables["state"] == "fail"
    assert "no database for feature group(s) product_stats (2 of 3 present)" in tables["detail"]
    assert "inferstack serve" in tables["fix"]
    assert checks["storage"]["state"] == "ok"

    # What the fix says repairs it: serve's supervisor creates the database before workers.
    start_server(data, workers=1).stop()
    assert doctor(data_dir=data)[0] == 0


def test_a_missing_cold_tier_database_fails_naming_the_interaction_type(
    sample: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    inferstack("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=data)
    environment = lmdb.open(str(data / "interactions" / "cold"), max_dbs=16)
    with environment.begin(write=True) as txn:
        txn.drop(environment.open_db(b"ic_order", txn=txn, create=False), delete=True)
    environment.close()

    code, checks = doctor(data_dir=data)
    assert code == 1
    types = checks["interaction type tables"]
    assert types["state"] == "fail"
    assert "no database for interaction type(s) order (4 of 5 present)" in types["detail"]
    assert checks["feature group tables"]["state"] == "ok"
    start_server(data, workers=1).stop()
    assert doctor(data_dir=data)[0] == 0


def test_an_unknown_data_dir_fails_with_the_fix(tmp_path: Path) -> None:
    code, checks = doctor(data_dir=tmp_path / "nowhere")
    assert code == 1
    config = checks["config store"]
    assert config["state"] == "fail"
    assert f"no data directory at {tmp_path / 'nowhere'}" in config["detail"]
    assert "--data-dir" in config["fix"] and "inferstack apply" in config["fix"]
    assert checks["storage"]["state"] == "fail"
    assert not (tmp_path / "nowhere").exists()  # the doctor created nothing

    text = inferstack("doctor", data_dir=tmp_path / "nowhere", check=False)
    assert text.returncode == 1 and "fix:" in text.stdout


def test_a_running_server_answers_health_on_both_ports(embedded: Path) -> None:
    server = start_server(embedded, workers=1)
    try:
        http = server.http_base.removeprefix("http://")
        code, checks = doctor("--server", server.grpc_target, "--http", http, data_dir=embedded)
        assert code == 0
        assert checks["server gRPC health"]["state"] == "ok"
        assert "SERVING" in checks["server gRPC health"]["detail"]
        assert checks["server HTTP health"]["state"] == "ok"
    finally:
        assert server.stop() == 0

    nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
    code, checks = doctor("--server", nobody, "--timeout", "2", data_dir=embedded)
    assert code == 1
    assert checks["server gRPC health"]["state"] == "fail"
    assert nobody in checks["server gRPC health"]["detail"]
    assert "inferstack serve" in checks["server gRPC health"]["fix"]


def test_a_tls_server_answers_health_when_checked_with_its_ca(
    embedded: Path, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path, "doctor-ca")
    cert, key = issue(ca, tmp_path, "server", server=True)
    server = start_tls_server(embedded, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        http = server.https_base.removeprefix("https://")
        ports = ("--server", server.grpc_target, "--http", http, "--timeout", "3")
        code, checks = doctor(*ports, "--ca", str(ca.pem), data_dir=embedded)
        assert code == 0
        assert checks["server gRPC health"]["state"] == "ok"
        assert checks["server HTTP health"]["detail"].startswith(f"GET https://{http}/healthz: 200")

        code, checks = doctor(*ports, data_dir=embedded)  # plaintext against a TLS port
        assert code == 1
        assert checks["server gRPC health"]["state"] == "fail"
        assert checks["server HTTP health"]["state"] == "fail"
    finally:
        assert stop(server) == 0


class ModelServer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """An Open Inference Protocol server (real gRPC, in this process) where `ready` models
    are ready, `loading` ones are known but not ready, and others are NOT_FOUND."""

    ready = frozenset({"scorer"})
    loading = frozenset({"warming"})

    def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's names)
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.name not in self.ready | self.loading:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} not found")
        return pb.ModelReadyResponse(ready=request.name in self.ready)


@pytest.fixture
def model_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(ModelServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def kserve_models(endpoints: dict[str, tuple[str, str]]) -> str:
    """A model config per entry: step name -> (address, served model name)."""
    steps = "".join(
        f"""      - name: {step}
        runtime: kserve
        endpoints: [{{address: '{address}', model: {served}}}]
        inputs: [product.price]
        outputs: [{step}]
"""
        for step, (address, served) in endpoints.items()
    )
    outputs = ", ".join(endpoints)
    return f"""models:
  - name: ranking
    context:
      - {{name: product_ids, type: int64, candidates: true}}
    fetches:
      - name: product
        entity: product
        keys: [context.product_ids]
        features: [product_stats.price]
    models:
{steps}    response:
      outputs: [{outputs}]
"""


def test_model_endpoints_and_blobs(sample: Path, model_server: str, tmp_path: Path) -> None:
    data = tmp_path / "d"
    inferstack("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=data)
    nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
    models = tmp_path / "models.yaml"
    models.write_text(
        kserve_models(
            {
                "up": (model_server, "scorer"),
                "warm": (model_server, "warming"),
                "gone": (model_server, "retired"),
                "down": (nobody, "scorer"),
            }
        )
    )
    inferstack("apply", "-f", str(models), data_dir=data)

    code, checks = doctor("--timeout", "2", data_dir=data)
    assert code == 1
    assert states(checks)["model ranking/up"] == "ok"
    assert "server and model ready" in checks["model ranking/up"]["detail"]
    assert checks["model ranking/warm"]["state"] == "fail"
    assert "model not ready" in checks["model ranking/warm"]["detail"]
    assert "load model 'warming'" in checks["model ranking/warm"]["fix"]
    assert checks["model ranking/gone"]["state"] == "fail"
    assert "not found" in checks["model ranking/gone"]["detail"]
    down = checks["model ranking/down"]
    assert down["state"] == "fail" and nobody in down["detail"] and nobody in down["fix"]


def test_a_missing_onnx_blob_fails(sample: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    inferstack(
        "sample", "train", "-d", str(sample), "-o", str(models), "--rows", "2000", data_dir=tmp_path
    )
    data = tmp_path / "d"
    inferstack(
        "apply",
        "-f",
        str(sample / "ecommerce.yaml"),
        "-f",
        str(models / "ranker.yaml"),
        data_dir=data,
    )
    code, checks = doctor(data_dir=data)
    assert code == 0
    assert states(checks)["model ranker/pctr"] == states(checks)["model ranker/pcvr"] == "ok"

    blobs = sorted((data / "config" / "blobs").glob("[!.]*"))  # not the store's .lock
    assert len(blobs) == 2
    blobs[0].unlink()
    code, checks = doctor(data_dir=data)
    assert code == 1
    failed = [c for c in checks.values() if c["state"] == "fail"]
    assert len(failed) == 1 and blobs[0].name[:12] in failed[0]["detail"]
    assert "missing from the config store" in failed[0]["detail"]
    assert "apply the model config again" in failed[0]["fix"]


# --- distributed: real Cassandra, Redis and ZooKeeper ------------------------------------


@pytest.fixture(scope="module")
def distributed_env(
    cassandra_endpoint: str, redis_endpoint: str, zookeeper_endpoint: str
) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        "INFERSTACK_DEPLOYMENT": DEPLOY,
        "INFERSTACK_HOST": "127.0.0.1",
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{cassandra_endpoint}]",
        "INFERSTACK_STORAGE__KEYSPACE": f"doctor_{run}",
        "INFERSTACK_CACHE__SHARED__ADDRESS": redis_endpoint,
        "INFERSTACK_CACHE__SHARED__PREFIX": f"dr{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": redis_endpoint,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"dh{run}:",
        "INFERSTACK_CONFIG__HOSTS": zookeeper_endpoint,
        "INFERSTACK_CONFIG__ROOT": f"/doctor-{run}",
    }


@pytest.fixture(scope="module")
def distributed_server(
    distributed_env: dict[str, str], sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Path]]:
    data = tmp_path_factory.mktemp("distributed")
    load_sample(sample, data, env=distributed_env)
    server = start_server(data, workers=1, env=distributed_env)
    yield server, data
    assert server.stop() == 0


@pytest.mark.services
def test_a_distributed_deployment_is_all_ok(
    distributed_env: dict[str, str], distributed_server: tuple[RunningServer, Path]
) -> None:
    server, data = distributed_server
    ports = {  # the deployment's own ports, as a user would set them: no --server needed
        "INFERSTACK_GRPC_PORT": server.grpc_target.rsplit(":", 1)[1],
        "INFERSTACK_HTTP_PORT": server.http_base.rsplit(":", 1)[1],
    }
    code, checks = doctor(data_dir=data, env={**distributed_env, **ports})
    assert states(checks) == {
        "config store": "ok",
        "storage": "ok",
        "feature group tables": "ok",
        "interaction type tables": "ok",
        "clock skew": "ok",
        "shared cache": "ok",
        "interactions hot tier": "ok",
        "server gRPC health": "ok",
        "server HTTP health": "ok",
        "free disk": "ok",
    }
    assert code == 0
    assert distributed_env["INFERSTACK_CONFIG__ROOT"] in checks["config store"]["detail"]
    assert "3 feature groups" in checks["config store"]["detail"]
    keyspace = distributed_env["INFERSTACK_STORAGE__KEYSPACE"]
    assert f"keyspace '{keyspace}' present" in checks["storage"]["detail"]
    assert "PONG" in checks["shared cache"]["detail"]
    assert "1 node(s) read" in checks["clock skew"]["detail"]


@pytest.mark.services
def test_an_unreachable_redis_fails_naming_the_address(
    distributed_env: dict[str, str], distributed_server: tuple[RunningServer, Path]
) -> None:
    _, data = distributed_server
    nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
    env = {**distributed_env, "INFERSTACK_CACHE__SHARED__ADDRESS": nobody}
    code, checks = doctor("--timeout", "2", data_dir=data, env=env)
    assert code == 1
    shared = checks["shared cache"]
    assert shared["state"] == "fail"
    assert f"redis {nobody} did not answer PING" in shared["detail"]
    assert nobody in shared["fix"] and "cache.shared.address" in shared["fix"]
    # The other systems are still checked and reported.
    assert checks["interactions hot tier"]["state"] == "ok"
    assert checks["feature group tables"]["state"] == "ok"


@pytest.mark.services
def test_a_missing_keyspace_fails_with_the_fix(
    distributed_env: dict[str, str], distributed_server: tuple[RunningServer, Path]
) -> None:
    _, data = distributed_server
    env = {**distributed_env, "INFERSTACK_STORAGE__KEYSPACE": f"absent_{uuid.uuid4().hex[:8]}"}
    code, checks = doctor(data_dir=data, env=env)
    assert code == 1
    assert checks["storage"]["state"] == "fail"
    assert "does not exist" in checks["storage"]["detail"]
    assert "storage.keyspace" in checks["storage"]["fix"]
