"""Object stores for the backup tests, all on loopback and started by the tests: a local
directory, moto's S3 server (in this process) and Azurite (npm, run by PID, telemetry off).
Daemons and the CLI reach them through the usual cloud environment variables, which obstore
reads, exactly as they would reach the real clouds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE = REPO_ROOT / "tests" / ".npm" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, in every Azure SDK's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
BUCKET = "tftp-backups"
CONTAINER = "tftp-backups"
START_TIMEOUT = 30.0


def _wait_listening(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited at start with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {START_TIMEOUT}s")


class Stores:
    """Location URL per kind; a kind whose emulator is unavailable is absent."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.env: dict[str, str] = {}

    def url(self, kind: str) -> str:
        if kind not in self.urls:
            pytest.skip(f"{kind} emulator unavailable (azurite is installed by make test)")
        return self.urls[kind]


def _start_moto(stores: Stores) -> object:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port(socket.SOCK_STREAM)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    stores.env.update(
        AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", AWS_REGION="us-east-1", **credentials
    )
    stores.urls["s3"] = f"s3://{BUCKET}/sites/site-a"
    return server


def _start_azurite(stores: Stores, workdir: Path) -> subprocess.Popen[bytes] | None:
    if not AZURITE.exists():
        return None
    from azure.storage.blob import BlobServiceClient

    port = free_port(socket.SOCK_STREAM)
    log = (workdir / "azurite.log").open("wb")
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--location", str(workdir / "azurite"), "--skipApiVersionCheck",
         "--disableTelemetry", "--silent"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    _wait_listening(port, process)
    endpoint = f"http://127.0.0.1:{port}"
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )
    # obstore cannot create containers.
    BlobServiceClient.from_connection_string(connection).create_container(CONTAINER)
    stores.env.update(AZURE_STORAGE_USE_EMULATOR="true", AZURITE_BLOB_STORAGE_URL=endpoint)
    stores.urls["az"] = f"az://{CONTAINER}/sites/site-a"
    return process


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    workdir = tmp_path_factory.mktemp("stores")
    stores = Stores()
    stores.urls["file"] = f"file://{workdir}/file-location/site-a"
    moto = _start_moto(stores)
    azurite = _start_azurite(stores, workdir)
    saved = {name: os.environ.get(name) for name in stores.env}
    os.environ.update(stores.env)  # inherited by the daemons and CLI runs the tests start
    try:
        yield stores
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if azurite is not None and azurite.poll() is None:
            os.kill(azurite.pid, signal.SIGTERM)
            try:
                azurite.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(azurite.pid, signal.SIGKILL)
                azurite.wait(5)
        moto.stop()  # type: ignore[attr-defined]
