"""Rolling out simple-tftpd to a site's hosts: inventory, rendering, releases, rollout.

`fabfile.py` holds only thin tasks; the logic lives here so it can be unit tested with mocked
connections. Arrows point down: this package reads the daemon's config model
(`simple_tftpd.config`) and nothing else of the daemon.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = PROJECT_ROOT / "templates"


class DeployError(Exception):
    """A problem that stops a task; the message is meant for the operator, not a traceback."""
