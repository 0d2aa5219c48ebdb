"""The Jinja and PyYAML parts of generated files, imported only when a node uses them: a node
without netboot rules does not carry those libraries in every worker process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import yaml
from jinja2 import BaseLoader, TemplateNotFound
from jinja2.environment import Environment
from jinja2.loaders import split_template_path
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from simple_tftpd.content.generated import (
    MAX_TEMPLATE_BYTES,
    _is_within,
    _key_of,
    _read_regular,
    _RenderLimit,
)
from simple_tftpd.content.resolve import PathResolver


def load_hosts_yaml(text: str) -> Any:
    """A hosts file's YAML as plain data; ValueError for anything YAML refuses."""
    try:
        return yaml.load(text, Loader=_HostsYamlLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


class _HostsYamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no stubs here
    """YAML as data only: no aliases, keys kept as written, no duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        # An alias-bomb expands exponentially as soon as a template prints it.
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, "expected a mapping", node.start_mark
            )
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain values", key_node.start_mark
                )
            # As written: YAML 1.1 would read 52:54:00:12:34:56 as a base-60 integer.
            key = str(key_node.value)
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


class ContentLoader(BaseLoader):
    """Templates from one directory of the content tree, confined like TFTP names are.

    Jinja's FileSystemLoader would follow a symlink out of the directory; here the real path
    must stay inside it, and `uptodate` is a stat, so edits and replications take effect on the
    next render.
    """

    def __init__(self, resolver: PathResolver, directory: str) -> None:
        self._root = str(resolver.root)  # already a real path
        self._directory = os.path.join(self._root, directory)

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)  # refuses ".." itself
        real_dir = os.path.realpath(self._directory)
        path = os.path.realpath(os.path.join(real_dir, *pieces))
        # Inside the templates directory, and that inside the content root, like the hosts file.
        if not _is_within(self._root, real_dir) or not _is_within(real_dir, path):
            raise TemplateNotFound(template)
        try:
            raw, key = _read_regular(path, MAX_TEMPLATE_BYTES)
        except OSError:
            raise TemplateNotFound(template) from None

        def uptodate() -> bool:
            try:
                return _key_of(os.stat(path)) == key
            except OSError:
                return False

        return raw.decode("utf-8", "replace"), path, uptodate


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with `*` and `**` bounded: `'x' * 10**10` would take all memory
    in one C call, which neither the output limit nor the time limit could interrupt."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_bytes = max_bytes

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | bytes | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > self.max_bytes
                ):
                    raise _RenderLimit(f"a repetition larger than {self.max_bytes} items")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * abs(left).bit_length() > 8 * self.max_bytes
        ):
            raise _RenderLimit("a power larger than the render limit")
        return super().call_binop(context, operator, left, right)
