"""Fake hosts for unit tests of the rollout: invoke's MockContext answering shell commands by
pattern, plus the bits of a fabric Connection the rollout uses (host, user, put)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from unittest.mock import Mock

from invoke.context import MockContext
from invoke.runners import Result

from deploy.inventory import Site, load_inventory

Answer = Result | list[Result]

SITE_YAML = """
site: lab
ssh: {user: root}
config:
  tftp: {root: /srv/tftp, single_port: true, drain_timeout: 5}
hosts:
  - {name: lb-1, address: 10.0.0.10, roles: [lb]}
  - {name: tftp-1, address: 10.0.0.11}
  - {name: tftp-2, address: 10.0.0.12}
  - {name: tftp-3, address: 10.0.0.13}
"""


# The same site clustered on TLS: etcd on tftp-1 and tftp-2, the plain health and metrics
# listener on 9180 (what the gate, the handoff and Prometheus use).
TLS_SITE_YAML = """
site: lab
ssh: {user: root}
config:
  tftp: {root: /srv/tftp, single_port: true, drain_timeout: 5}
  api: {token: a-long-shared-admin-token, metrics_port: 9180}
  clustering: {enabled: true}
  security:
    tls:
      enabled: true
      ca_file: /etc/simple-tftpd/tls/ca.pem
      cert_file: /etc/simple-tftpd/tls/node.pem
      key_file: /etc/simple-tftpd/tls/node.key
      crl_file: /etc/simple-tftpd/tls/crl.pem
hosts:
  - {name: lb-1, address: 10.0.0.10, roles: [lb]}
  - {name: tftp-1, address: 10.0.0.11, roles: [tftp, etcd]}
  - {name: tftp-2, address: 10.0.0.12, roles: [tftp, etcd]}
  - {name: tftp-3, address: 10.0.0.13}
"""


def tls_site(tmp_path: Path, metrics_port: bool = True) -> Site:
    """TLS_SITE_YAML; without the metrics listener when `metrics_port` is false."""
    text = TLS_SITE_YAML if metrics_port else TLS_SITE_YAML.replace(", metrics_port: 9180", "")
    return lab_site(tmp_path, text)


def lab_site(tmp_path: Path, text: str = SITE_YAML) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_inventory(path)


def ok(stdout: str = "") -> Result:
    return Result(stdout=stdout, exited=0)


def fail(stdout: str = "", stderr: str = "boom") -> Result:
    return Result(stdout=stdout, stderr=stderr, exited=1)


class FakeHost(MockContext):
    """Commands are answered by the first pattern found in them (a regex search); anything
    else succeeds with no output. Uploads are recorded; `fail_uploads` makes them raise."""

    def __init__(
        self,
        name: str,
        answers: Sequence[tuple[str, Answer]] = (),
        *,
        user: str = "root",
        fail_uploads: bool = False,
    ) -> None:
        def table() -> dict[re.Pattern[str], Answer]:
            patterns: dict[re.Pattern[str], Answer] = {
                re.compile(f".*?{pattern}", re.S): value for pattern, value in answers
            }
            patterns[re.compile(".*", re.S)] = ok()
            return patterns

        super().__init__(run=table(), sudo=table(), repeat=True)
        # MockContext is a config proxy: plain attribute writes would land in its config.
        self._set("host", name)
        self._set("user", user)
        self._set("uploads", [])
        self._set("fail_uploads", fail_uploads)

    def put(self, local: Any, remote: str | None = None, preserve_mode: bool = True) -> None:
        if self.fail_uploads:
            raise OSError("Connection reset by peer")
        data = local.getvalue() if isinstance(local, io.BytesIO) else Path(local).read_bytes()
        self.uploads.append((remote, data))

    @property
    def commands(self) -> list[str]:
        calls = cast(Mock, self.run).call_args_list + cast(Mock, self.sudo).call_args_list
        return [str(call.args[0]) for call in calls]

    def index(self, pattern: str) -> int:
        """Position of the first command matching `pattern` (-1 when none did)."""
        for position, command in enumerate(self.commands):
            if re.search(pattern, command, re.S):
                return position
        return -1

    def ran(self, pattern: str) -> bool:
        return self.index(pattern) >= 0
