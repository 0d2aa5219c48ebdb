"""simple-tftpd: a fast, hardened TFTP daemon for datacenter network boot and provisioning."""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the one version; the installed distribution's metadata carries it here.
try:
    __version__ = version("simple-tftpd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
