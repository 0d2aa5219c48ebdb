"""The user data each cloud's nodes boot with, taken from what the stacks declared.

The daemon config inside is written to a file and checked by the real CLI
(`simple-tftpd check-config`), before and after the node's own settings are applied.
"""

from __future__ import annotations

import base64
import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from stacks.aws.components import user_data_base64
from stacks.cloud_init import NODE_SETTINGS_SCRIPT, template_environment
from tests.stacks import sites
from tests.stacks.harness import StackRun

CLI = Path(sys.executable).with_name("simple-tftpd")
CASES = [(cloud, variant) for cloud in sites.CLOUDS for variant in ("us-east", "clustered")]


def _run(cloud: str, variant: str) -> StackRun:
    if variant == "clustered":
        return sites.variant_run(cloud, variant)
    return sites.example_run(cloud, variant)


def user_data(run: StackRun, cloud: str) -> tuple[str, bool]:
    """The declared user data and whether it was passed as a secret."""
    if cloud == "aws":
        template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
        text = base64.b64decode(template.inputs["userData"]).decode()
        return text, "userData" in template.secret_inputs
    if cloud == "azure":
        scale_set = run.one("azure-native:compute:VirtualMachineScaleSet")
        encoded = scale_set.inputs["virtualMachineProfile"]["osProfile"]["customData"]
        return base64.b64decode(
            encoded
        ).decode(), "virtualMachineProfile" in scale_set.secret_inputs
    template = run.one("gcp:compute/regionInstanceTemplate:RegionInstanceTemplate")
    return template.inputs["metadata"]["user-data"], "metadata" in template.secret_inputs


def written(document: dict[str, Any], path: str) -> str:
    (entry,) = [item for item in document["write_files"] if item["path"] == path]
    content: str = entry["content"]
    return content


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(params=CASES, ids=[f"{cloud}-{variant}" for cloud, variant in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, StackRun, dict[str, Any]]:
    cloud, variant = request.param
    run = _run(cloud, variant)
    text, secret = user_data(run, cloud)
    assert secret, "user data carries tokens: it must reach the provider as a secret"
    assert text.startswith("#cloud-config\n")
    return cloud, run, yaml.safe_load(text)


def test_rendered_daemon_config_passes_check_config(
    case: tuple[str, StackRun, dict[str, Any]], tmp_path: Path
) -> None:
    cloud, run, document = case
    path = tmp_path / "config.json"
    path.write_text(written(document, "/etc/simple-tftpd/config.json"))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout

    config = json.loads(path.read_text())
    assert config["tftp"]["single_port"] is True
    assert config["api"]["bind"] in ("0.0.0.0", "::")
    assert config["backup"]["locations"][0] == run.outputs["backup_location"]
    # GCP passthrough load balancing is direct server return: TFTP binds the LB address.
    expected_bind = run.outputs["lb_address"] if cloud == "gcp" else "0.0.0.0"
    assert config["tftp"]["bind"] == expected_bind


def test_node_settings_keep_the_config_valid(
    case: tuple[str, StackRun, dict[str, Any]], tmp_path: Path
) -> None:
    _, _, document = case
    path = tmp_path / "config.json"
    path.write_text(written(document, "/etc/simple-tftpd/config.json"))
    script = written(document, "/usr/local/sbin/simple-tftpd-node-settings")
    assert script == NODE_SETTINGS_SCRIPT.read_text()
    node_settings = runpy.run_path(str(NODE_SETTINGS_SCRIPT))
    config = node_settings["apply"](
        json.loads(path.read_text()), "Tftp_Node-07.internal", "10.9.8.7"
    )
    path.write_text(json.dumps(config))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert config["node"]["node_id"] == "tftp_node-07"
    if config["clustering"]["enabled"]:
        assert config["clustering"]["advertise"] == f"10.9.8.7:{config['api']['port']}"


def test_node_settings_script_runs_as_cloud_init_runs_it(tmp_path: Path) -> None:
    run = sites.example_run("aws", "us-east")
    document = yaml.safe_load(user_data(run, "aws")[0])
    path = tmp_path / "config.json"
    path.write_text(written(document, "/etc/simple-tftpd/config.json"))
    path.chmod(0o640)
    subprocess.run([sys.executable, str(NODE_SETTINGS_SCRIPT), str(path)], check=True, timeout=60)
    assert path.stat().st_mode & 0o777 == 0o640  # rewritten in place
    assert check_config(path).returncode == 0


def test_cloud_init_installs_configures_and_starts_the_daemon(
    case: tuple[str, StackRun, dict[str, Any]],
) -> None:
    cloud, run, document = case
    assert "python3-venv" in document["packages"]
    commands = [c if isinstance(c, list) else [c] for c in document["runcmd"]]
    assert commands[0] == ["set -eu"]  # a failed step stops the boot script
    (pip,) = [c for c in commands if c[0] == "/opt/simple-tftpd/releases/cloud-init/venv/bin/pip"]
    assert pip[-1].startswith("simple-tftpd")
    settings = commands.index(
        [
            "/opt/simple-tftpd/releases/cloud-init/venv/bin/python",
            "/usr/local/sbin/simple-tftpd-node-settings",
            "/etc/simple-tftpd/config.json",
        ]
    )
    check = commands.index(
        [
            "/opt/simple-tftpd/releases/cloud-init/venv/bin/simple-tftpd",
            "check-config",
            "--quiet",
            "/etc/simple-tftpd/config.json",
        ]
    )
    start = commands.index(["systemctl", "enable", "--now", "simple-tftpd.service"])
    link = commands.index(["ln", "-sfn", "releases/cloud-init", "/opt/simple-tftpd/current"])
    assert commands.index(pip) < link < settings < check < start
    unit = written(document, "/etc/systemd/system/simple-tftpd.service")
    assert (
        "ExecStart=/opt/simple-tftpd/current/venv/bin/simple-tftpd serve"
        " --config /etc/simple-tftpd/config.json" in unit
    )
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    admin = [
        user
        for user in document["users"]
        if isinstance(user, dict) and user.get("ssh_authorized_keys")
    ]
    assert [user["name"] for user in admin] == [run.outputs["ssh_user"]]
    environment = written(document, "/etc/simple-tftpd/environment")
    names = {line.split("=")[0] for line in environment.splitlines()}
    assert (
        names
        == {
            "aws": {"AWS_REGION"},
            "azure": {"AZURE_STORAGE_ACCOUNT_NAME", "AZURE_CLIENT_ID"},
            "gcp": {"GOOGLE_CLOUD_PROJECT"},
        }[cloud]
    )


def test_writable_directories_are_created_and_allowed() -> None:
    run = sites.variant_run("aws", "clustered")
    document = yaml.safe_load(user_data(run, "aws")[0])
    unit = written(document, "/etc/systemd/system/simple-tftpd.service")
    for directory in (
        "/srv/tftp/uploads",
        "/var/backups/tftp",
        "/var/lib/simple-tftpd/cluster-state",
    ):
        assert f"ReadWritePaths=-{directory}" in unit
        assert [
            "install",
            "-d",
            "-o",
            "simple-tftpd",
            "-g",
            "simple-tftpd",
            "-m",
            "0750",
            directory,
        ] in document["runcmd"]
    assert "TimeoutStopSec=35" in unit  # drain_timeout 20 + margin


def test_template_is_rendered_with_strict_undefined() -> None:
    template = template_environment().get_template("user-data.yaml.j2")
    with pytest.raises(jinja2.UndefinedError):
        template.render(site_id="x", cloud="aws")


def test_aws_user_data_over_the_ec2_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="EC2 allows 16384"):
        user_data_base64("x" * 16385)
