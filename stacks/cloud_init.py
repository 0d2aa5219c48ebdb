"""Cloud-init user data for a site's nodes, rendered from templates/cloud-init/.

The daemon config inside is `Site.node_config(...)`, validated by the daemon's model before it
is written; the rendered document is parsed back as YAML so a template mistake fails at
`pulumi preview`, not on a booting node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pulumi
import yaml

from stacks.site import NODE_STATE_DIR, Site

__all__ = [
    "NODE_SETTINGS_SCRIPT",
    "TEMPLATE_DIR",
    "NodeRuntime",
    "render_user_data",
    "template_environment",
    "user_data",
]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "cloud-init"
NODE_SETTINGS_SCRIPT = TEMPLATE_DIR / "simple-tftpd-node-settings.py"
# The layout of deploy/ (fab deploy): releases side by side, `current` names the running one.
PREFIX = "/opt/simple-tftpd"
RELEASE = "releases/cloud-init"
VENV = f"{PREFIX}/{RELEASE}/venv"
# Room for the stop after the drain: systemd kills the daemon if it overruns.
_STOP_MARGIN_SECONDS = 15


@dataclass(frozen=True)
class NodeRuntime:
    """What a cloud knows about its nodes once its resources exist."""

    cloud: str
    backup_location: str
    tftp_bind: str = "0.0.0.0"
    # Written to /etc/simple-tftpd/environment (read by the backup client).
    environment: Mapping[str, str] = field(default_factory=dict)


def _yaml_scalar(value: object) -> str:
    # A JSON string is a valid double-quoted YAML scalar: safe for any character.
    return json.dumps(str(value))


def template_environment() -> jinja2.Environment:
    """The Jinja environment of templates/cloud-init: undefined variables are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["yaml"] = _yaml_scalar
    return env


def user_data(
    site: Site,
    cloud: str,
    backup_location: pulumi.Input[str],
    *,
    tftp_bind: pulumi.Input[str] = "0.0.0.0",
    environment: Mapping[str, pulumi.Input[str]] | None = None,
    encode: Callable[[str], str] = lambda text: text,
) -> pulumi.Output[str]:
    """The rendered user data once the resources it names exist; secret (it carries tokens)."""
    env = dict(environment or {})
    names = list(env)

    def render(values: list[Any]) -> str:
        location, bind, *settings = values
        runtime = NodeRuntime(cloud, location, bind, dict(zip(names, settings, strict=True)))
        return encode(render_user_data(site, runtime))

    rendered = pulumi.Output.all(backup_location, tftp_bind, *env.values()).apply(render)
    return pulumi.Output.secret(rendered)


def render_user_data(site: Site, node: NodeRuntime) -> str:
    config = site.node_config(tftp_bind=node.tftp_bind, backup_location=node.backup_location)
    for name, value in node.environment.items():
        if not name.isidentifier() or "\n" in value:
            raise ValueError(f"bad environment entry {name!r}")
    context: dict[str, Any] = {
        "site_id": site.site_id,
        "cloud": node.cloud,
        "state_dir": str(NODE_STATE_DIR),
        "prefix": PREFIX,
        "release": RELEASE,
        "venv": VENV,
        "ssh_user": site.stack.ssh_user,
        "ssh_public_keys": site.stack.ssh_public_keys,
        "config_json": json.dumps(config.model_dump(mode="json"), indent=2),
        "environment": dict(node.environment),
        "node_settings_script": NODE_SETTINGS_SCRIPT.read_text(encoding="utf-8"),
        "stop_timeout": int(config.tftp.drain_timeout) + _STOP_MARGIN_SECONDS,
        "writable_paths": [str(path) for path in site.writable_dirs(config)],
        "pip_arguments": site.stack.install.pip_arguments(),
        "content_root": str(site.content_root),
    }
    text = template_environment().get_template("user-data.yaml.j2").render(context)
    document = yaml.safe_load(text)
    if not text.startswith("#cloud-config\n") or not isinstance(document, dict):
        raise ValueError("rendered user data is not a #cloud-config document")
    return text
