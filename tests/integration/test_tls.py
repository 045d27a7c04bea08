"""TLS on both ports of a real `inferstack serve`, with certificates made here: server
authentication alone, then client certificates required (mutual TLS); a plaintext client or
one that does not trust the server fails cleanly and the server keeps serving."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inferstack.client import FeatureStoreClient, InferflowClient
from inferstack.core.errors import InvalidArgumentError
from inferstack.server.supervisor import free_port
from tests.ranker import expected_scores, ranker_sample
from tests.servers import inferstack, load_sample, start_server

SAMPLE = Path(__file__).parents[2] / "src" / "inferstack" / "sampledata" / "ecommerce.yaml"
RETRIEVE = {"entity": "user", "keys": {"user_id": [1]}, "features": ["user_profile"]}


@dataclass
class Issuer:
    key: ec.EllipticCurvePrivateKey
    name: x509.Name
    pem: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _builder(subject: x509.Name, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_ca(folder: Path, name: str) -> Issuer:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        _builder(subject, subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = folder / f"{name}.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Issuer(key, subject, pem)


def issue(ca: Issuer, folder: Path, name: str, server: bool) -> tuple[Path, Path]:
    """(certificate, key) signed by `ca`: for 127.0.0.1 and localhost, or a client."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(subject, ca.name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if server:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    pem = folder / f"{name}.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return pem, _write_key(key, folder / f"{name}.key")


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "test-ca")
    other = make_ca(folder, "other-ca")
    return Pki(
        ca.pem,
        issue(ca, folder, "server", server=True),
        issue(ca, folder, "client", server=False),
        issue(other, folder, "stranger", server=False),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    inferstack("apply", "-f", str(SAMPLE), data_dir=data)
    return data


@dataclass
class TlsServer:
    process: subprocess.Popen[str]
    grpc_target: str
    https_base: str
    log: Path


def start_tls_server(data: Path, *flags: str, timeout: float = 60.0) -> TlsServer:
    """`inferstack serve` with TLS flags; ready once the supervisor announces every worker
    (tests/servers.py checks health over plaintext, which a TLS port refuses)."""
    grpc_port, http_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    log = data / f"serve-tls-{grpc_port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "inferstack.cli.main", "serve", "--data-dir", str(data),
         "--port", str(grpc_port), "--http-port", str(http_port), "--workers", "2", *flags],
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while "inferstack serving gRPC" not in log.read_text():
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return TlsServer(process, f"127.0.0.1:{grpc_port}", f"https://127.0.0.1:{http_port}", log)


def stop(server: TlsServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(15)


def retrieve(server: TlsServer, **security: Path | tuple[Path, Path] | None) -> str:
    """The status of one Retrieve over gRPC with these client settings."""
    client_cert = security.pop("client", None)
    cert, key = client_cert if isinstance(client_cert, tuple) else (None, None)
    ca = security.pop("ca", None)
    assert not isinstance(ca, tuple)
    try:
        with FeatureStoreClient(
            server.grpc_target, timeout=5, connections=1, ca=ca, cert=cert, key=key
        ) as client:
            client.retrieve("user", {"user_id": [1]}, ["user_profile"])
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def https_status(server: TlsServer, context: ssl.SSLContext) -> int:
    request = urllib.request.Request(
        server.https_base + "/v1/retrieve", json.dumps(RETRIEVE).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return int(response.status)


@pytest.fixture(scope="module")
def tls_server(data: Path, pki: Pki) -> Iterator[TlsServer]:
    cert, key = pki.server
    server = start_tls_server(data, "--tls-cert", str(cert), "--tls-key", str(key))
    yield server
    assert stop(server) == 0


def test_clients_that_trust_the_ca_are_served(tls_server: TlsServer, pki: Pki) -> None:
    assert retrieve(tls_server, ca=pki.ca) == "OK"
    assert https_status(tls_server, ssl.create_default_context(cafile=pki.ca)) == 200


def test_plaintext_and_untrusting_clients_fail_cleanly(tls_server: TlsServer, pki: Pki) -> None:
    assert retrieve(tls_server) == "UNAVAILABLE"  # plaintext against a TLS port
    assert retrieve(tls_server, ca=pki.stranger[0]) == "UNAVAILABLE"  # not the server's CA
    plain = urllib.request.Request(
        tls_server.https_base.replace("https:", "http:") + "/v1/retrieve",
        json.dumps(RETRIEVE).encode(),
        method="POST",
    )
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain, timeout=10).close()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        https_status(tls_server, ssl.create_default_context())
    # Nothing of that hurt the server.
    assert retrieve(tls_server, ca=pki.ca) == "OK"
    assert tls_server.process.poll() is None


def test_client_certificates_are_required_and_verified(data: Path, pki: Pki) -> None:
    cert, key = pki.server
    server = start_tls_server(
        data, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)
    )
    try:
        assert retrieve(server, ca=pki.ca, client=pki.client) == "OK"
        assert retrieve(server, ca=pki.ca) == "UNAVAILABLE"  # no client certificate
        assert retrieve(server, ca=pki.ca, client=pki.stranger) == "UNAVAILABLE"
        context = ssl.create_default_context(cafile=pki.ca)
        context.load_cert_chain(*pki.client)
        assert https_status(server, context) == 200
        without = ssl.create_default_context(cafile=pki.ca)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_status(server, without)
        assert retrieve(server, ca=pki.ca, client=pki.client) == "OK"
        log = server.log.read_text()
        assert "Traceback" not in log
    finally:
        assert stop(server) == 0


def test_a_missing_certificate_file_is_one_clear_error(data: Path, pki: Pki) -> None:
    missing = data / "nowhere.pem"
    result = inferstack("serve", "--port", "0", "--tls-cert", str(missing),
                        "--tls-key", str(pki.server[1]), data_dir=data, check=False)  # fmt: skip
    assert result.returncode == 1
    assert f"tls.cert {missing}" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InvalidArgumentError, match="a client certificate needs both"):
        FeatureStoreClient("127.0.0.1:1", cert=pki.client[0])


def test_the_cli_takes_a_ca_and_a_client_certificate(data: Path, pki: Pki) -> None:
    cert, key = pki.server
    server = start_tls_server(
        data, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)
    )
    try:
        target = ["--target", server.grpc_target, "--json"]
        ok = inferstack("get", "user", "user_id=1", "-f", "user_profile", *target,
                        "--ca", str(pki.ca), "--cert", str(pki.client[0]),
                        "--key", str(pki.client[1]), data_dir=data)  # fmt: skip
        assert json.loads(ok.stdout)
        refused = inferstack("get", "user", "user_id=1", *target, "--ca", str(pki.ca),
                             data_dir=data, check=False)  # fmt: skip
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    finally:
        assert stop(server) == 0


def test_inferflow_reads_a_remote_feature_store_over_mutual_tls_with_a_token(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> None:
    """Inferflow in one server, features in another that requires client certificates and
    tokens: deploy.yaml's `inferflow.feature_store_tls` and `feature_store_token_file` carry
    them, and the scores equal a direct read of the store plus onnxruntime."""
    sample = ranker_sample(tmp_path_factory.mktemp("ranker"), scale=0.01)
    store = tmp_path_factory.mktemp("store")
    load_sample(sample, store)
    added = inferstack("callers", "add", "ranking", "--grant", "read:feature_group/*",
                       "--grant", "read:interaction_type/*", "--json", data_dir=store)  # fmt: skip
    token = json.loads(added.stdout)["token"]
    cert, key = pki.server
    remote = start_tls_server(
        store, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)
    )
    own = tmp_path_factory.mktemp("definitions-only")  # no rows: only the remote has them
    inferstack("apply", "-f", str(sample), data_dir=own)
    token_file = own / "feature-store.token"
    token_file.write_text(token + "\n")
    deploy = own / "deploy.yaml"
    deploy.write_text(
        f"inferflow:\n"
        f"  feature_store: {remote.grpc_target}\n"
        f"  feature_store_token_file: {token_file}\n"
        f"  feature_store_tls: {{ca: {pki.ca}, cert: {pki.client[0]}, key: {pki.client[1]}}}\n"
    )
    server = start_server(own, "--config", str(deploy), workers=1)
    rng = np.random.default_rng(8)
    try:
        with (
            FeatureStoreClient(remote.grpc_target, token=token, ca=pki.ca,
                               cert=pki.client[0], key=pki.client[1]) as features,
            InferflowClient(server.grpc_target, timeout=10) as client,
        ):  # fmt: skip
            for _ in range(3):
                user = int(rng.integers(1, 101))
                products = rng.choice(np.arange(1, 501), 30, replace=False).tolist()
                assert features.retrieve("product", {"product_id": products}).found().all()
                scores = client.infer("ranker", {"user_id": user, "product_ids": products})
                expected = expected_scores(features, sample, user, products)
                for name in ("pctr", "pcvr"):
                    np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6)
    finally:
        assert server.stop() == 0
        assert stop(remote) == 0
    assert token not in server.log.read_text() and token not in remote.log.read_text()


def test_a_missing_remote_credential_file_is_one_clear_error(tmp_path: Path, pki: Pki) -> None:
    deploy = tmp_path / "deploy.yaml"
    missing = tmp_path / "absent.token"
    deploy.write_text(
        f"inferflow:\n  feature_store: 127.0.0.1:1\n  feature_store_token_file: {missing}\n"
    )
    result = inferstack("serve", "--config", str(deploy), "--port", "0", data_dir=tmp_path,
                        check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"inferflow.feature_store_token_file {missing}" in result.stderr
    half = f"{{cert: {pki.client[0]}}}"  # a certificate without its key
    deploy.write_text(f"inferflow:\n  feature_store: 127.0.0.1:1\n  feature_store_tls: {half}\n")
    result = inferstack("serve", "--config", str(deploy), "--port", "0", data_dir=tmp_path,
                        check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "inferflow.feature_store_tls" in result.stderr
    assert "needs both cert and key" in result.stderr


def test_inferstack_ui_serves_the_console_over_tls(data: Path, pki: Pki) -> None:
    cert, key = pki.server
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "inferstack.cli.main", "ui", "--data-dir", str(data),
         "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"https://127.0.0.1:{port}/ui" in first, first
        context = ssl.create_default_context(cafile=str(pki.ca))
        address = f"https://127.0.0.1:{port}/ui/catalog"
        with urllib.request.urlopen(address, timeout=10, context=context) as answer:
            assert answer.status == 200
        # Plaintext HTTP gets no console (the TLS port hangs up on it).
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/catalog", timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
