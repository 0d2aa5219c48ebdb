"""Stack config reads shared by the clouds: the `site` object and provider settings.

Each cloud's `config.py` calls these and adds its own defaults and checks; components never
read config themselves.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from stacks.site import Site, StackConfigError, load_site

__all__ = ["SettingsProblems", "read_site"]


def read_site(project_dir: Path) -> Site:
    """The validated site of this stack (`<project>:site`); paths are relative to the project."""
    raw = pulumi.Config().get_object("site")
    if raw is None:
        project = pulumi.get_project()
        raise StackConfigError(
            [f"{project}:site: not set; see docs/stacks.md and the Pulumi.<site>.yaml examples"]
        )
    return load_site(raw, project_dir)


class SettingsProblems:
    """Collects cloud settings problems so that all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def require(self, namespace: str, key: str, example: str) -> str:
        value = pulumi.Config(namespace).get(key)
        if not value:
            self.problems.append(
                f"{namespace}:{key}: not set; e.g. pulumi config set {namespace}:{key} {example}"
            )
            return ""
        return value

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def raise_any(self) -> None:
        if self.problems:
            raise StackConfigError(self.problems)
