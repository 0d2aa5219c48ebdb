"""Settings for the stack tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The provider SDKs warn at import time about classes of theirs that these stacks never
    # use; declared resources are checked for deprecation in test_policy.py instead.
    config.addinivalue_line(
        "filterwarnings",
        r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_(aws|gcp|azure_native)\.",
    )
