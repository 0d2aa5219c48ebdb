"""Real Debian test hosts on one machine: systemd-nspawn containers with their own systemd and
sshd, each in its own network namespace on a private bridge.

`base.ensure_base()` builds the shared Debian root once (debootstrap, cached outside the repo);
`Testbed` boots hosts on overlays of it and tears everything down by PID, also after a failure.
"""

from testbed.base import BASE_PACKAGES, ensure_base
from testbed.bed import HostSpec, Testbed, TestbedError

__all__ = ["BASE_PACKAGES", "HostSpec", "Testbed", "TestbedError", "ensure_base"]
