import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.content.resolve import PathResolver, ResolveError

BACKSLASH_TO_SLASH = (r"\\", "/")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub" / "deep").mkdir(parents=True)
    (r / "uploads").mkdir()
    (r / "pxelinux.0").write_bytes(b"boot")
    (r / "sub" / "deep" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    return r


def assert_error(code: int, func: object, *args: object) -> ResolveError:
    assert callable(func)
    with pytest.raises(ResolveError) as info:
        func(*args)
    assert info.value.code == code
    return info.value


def test_plain_file(root: Path) -> None:
    assert PathResolver(root).resolve_read("pxelinux.0") == root / "pxelinux.0"


def test_nested_file(root: Path) -> None:
    resolver = PathResolver(root)
    assert resolver.resolve_read("sub/deep/vmlinuz") == root / "sub" / "deep" / "vmlinuz"
    assert resolver.resolve_read("sub//./deep/vmlinuz") == root / "sub" / "deep" / "vmlinuz"


def test_leading_slashes_are_relative_to_root(root: Path) -> None:
    resolver = PathResolver(root)
    assert resolver.resolve_read("/pxelinux.0") == root / "pxelinux.0"
    assert resolver.resolve_read("//sub/deep/vmlinuz") == root / "sub" / "deep" / "vmlinuz"
    assert resolver.rel_name("/sub/deep/vmlinuz") == "sub/deep/vmlinuz"


def test_root_is_resolved(tmp_path: Path, root: Path) -> None:
    (tmp_path / "link").symlink_to(root)
    resolver = PathResolver(tmp_path / "link")
    assert resolver.root == Path(os.path.realpath(root))
    assert resolver.resolve_read("pxelinux.0") == resolver.root / "pxelinux.0"


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../outside/secret",
        "/../outside/secret",
        "sub/../../../etc/hostname",
        "sub/..",
        "sub/../pxelinux.0",
        "sub/deep/../../pxelinux.0",
    ],
)
def test_dotdot_rejected(root: Path, name: str) -> None:
    resolver = PathResolver(root)
    err = assert_error(2, resolver.resolve_read, name)
    assert err.message == "Access violation"
    assert_error(2, resolver.rel_name, name)
    assert_error(2, resolver.resolve_write, name, [""])


def test_backslash_traversal_without_remap(root: Path) -> None:
    assert_error(2, PathResolver(root).resolve_read, "..\\..\\etc\\passwd")
    assert_error(2, PathResolver(root).resolve_read, "sub\\..\\pxelinux.0")


def test_backslash_traversal_with_remap(root: Path) -> None:
    resolver = PathResolver(root, [BACKSLASH_TO_SLASH])
    assert_error(2, resolver.resolve_read, "..\\..\\etc\\passwd")
    assert resolver.resolve_read("sub\\deep\\vmlinuz") == root / "sub" / "deep" / "vmlinuz"


def test_backslash_is_an_ordinary_character_without_remap(root: Path) -> None:
    (root / "win\\name.bin").write_bytes(b"x")
    assert PathResolver(root).resolve_read("win\\name.bin") == root / "win\\name.bin"


def test_absolute_path_maps_into_root(root: Path) -> None:
    err = assert_error(1, PathResolver(root).resolve_read, "/etc/passwd")
    assert err.message == "File not found"
    assert str(root) not in str(err)


def test_missing_file(root: Path) -> None:
    assert_error(1, PathResolver(root).resolve_read, "nope.bin")
    assert_error(1, PathResolver(root).resolve_read, "pxelinux.0/child")


def test_symlink_inside_to_inside(root: Path) -> None:
    (root / "default").symlink_to("sub/deep/vmlinuz")
    (root / "alias").symlink_to(root / "sub")
    resolver = PathResolver(root)
    assert resolver.resolve_read("default") == root / "sub" / "deep" / "vmlinuz"
    assert resolver.resolve_read("alias/deep/vmlinuz") == root / "sub" / "deep" / "vmlinuz"


def test_symlink_to_outside_rejected(root: Path, tmp_path: Path) -> None:
    (root / "leak").symlink_to(tmp_path / "outside" / "secret")
    (root / "dangling").symlink_to(tmp_path / "outside" / "missing")
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_read, "leak")
    assert_error(2, resolver.resolve_read, "dangling")


def test_symlinked_directory_to_outside_rejected(root: Path, tmp_path: Path) -> None:
    (root / "sub" / "ext").symlink_to(tmp_path / "outside")
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_read, "sub/ext/secret")
    assert_error(2, resolver.resolve_write, "sub/ext/new", ["sub/"])


def test_sibling_with_root_prefix_rejected(root: Path, tmp_path: Path) -> None:
    # A string-prefix check would accept <tmp>/root-evil as being inside <tmp>/root.
    evil = tmp_path / "root-evil"
    evil.mkdir()
    (evil / "x").write_bytes(b"x")
    (root / "evil").symlink_to(evil / "x")
    assert_error(2, PathResolver(root).resolve_read, "evil")


def test_directory_rejected(root: Path) -> None:
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_read, "sub")
    assert_error(2, resolver.resolve_read, "/")
    assert_error(2, resolver.resolve_read, ".")


def test_fifo_rejected(root: Path) -> None:
    os.mkfifo(root / "pipe")
    # Must return (not block in open) and refuse.
    assert_error(2, PathResolver(root).resolve_read, "pipe")


def test_device_rejected(tmp_path: Path) -> None:
    (tmp_path / "null").symlink_to("/dev/null")
    resolver = PathResolver(Path("/dev"))
    assert_error(2, resolver.resolve_read, "null")


@pytest.mark.parametrize("name", ["", "/", "///", "a\x00b", "pxelinux.0\x00.txt"])
def test_malformed_names_rejected(root: Path, name: str) -> None:
    assert_error(2, PathResolver(root).resolve_read, name)


def test_long_name_rejected(root: Path) -> None:
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_read, "a" * 1025)
    # The limit is in bytes: 342 three-byte characters are 1026 bytes.
    assert_error(2, resolver.resolve_read, "\u20ac" * 342)
    assert_error(1, resolver.resolve_read, "a/" * 511 + "a")


def test_lone_surrogate_rejected(root: Path) -> None:
    assert_error(2, PathResolver(root).resolve_read, "bad\ud800")


def test_non_utf8_name_served(root: Path) -> None:
    raw = b"caf\xe9.bin"
    with open(os.path.join(os.fsencode(root), raw), "wb") as f:
        f.write(b"data")
    name = raw.decode("utf-8", "surrogateescape")
    path = PathResolver(root).resolve_read(name)
    assert os.fsencode(path) == os.path.join(os.fsencode(root), raw)
    assert path.read_bytes() == b"data"


def test_remap_applies_in_order(root: Path) -> None:
    resolver = PathResolver(root, [(r"^boot/", "sub/"), (r"^sub/", "sub/deep/")])
    assert resolver.rel_name("boot/vmlinuz") == "sub/deep/vmlinuz"
    assert resolver.resolve_read("boot/vmlinuz") == root / "sub" / "deep" / "vmlinuz"
    reversed_order = PathResolver(root, [(r"^sub/", "sub/deep/"), (r"^boot/", "sub/")])
    assert reversed_order.rel_name("boot/vmlinuz") == "sub/vmlinuz"


def test_remap_cannot_introduce_traversal(root: Path) -> None:
    resolver = PathResolver(root, [(r"^up/", "../")])
    assert_error(2, resolver.resolve_read, "up/outside/secret")


def test_write_allowed_under_prefix(root: Path) -> None:
    resolver = PathResolver(root)
    assert resolver.resolve_write("uploads/a.bin", ["uploads/"]) == root / "uploads" / "a.bin"
    assert resolver.resolve_write("/uploads/a.bin", ["uploads"]) == root / "uploads" / "a.bin"
    (root / "uploads" / "a.bin").write_bytes(b"old")
    assert resolver.resolve_write("uploads/a.bin", ["/uploads/"]) == root / "uploads" / "a.bin"


def test_write_prefix_is_directory_wise(root: Path) -> None:
    (root / "uploadsX").mkdir()
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_write, "uploadsX/a", ["uploads/"])
    assert_error(2, resolver.resolve_write, "uploadsX/a", ["uploads"])
    assert_error(2, resolver.resolve_write, "pxelinux.0", ["uploads/"])
    assert_error(2, resolver.resolve_write, "uploads/a", [])


def test_write_empty_prefix_means_whole_root(root: Path) -> None:
    resolver = PathResolver(root)
    assert resolver.resolve_write("new.bin", [""]) == root / "new.bin"
    assert resolver.resolve_write("sub/new.bin", ["/"]) == root / "sub" / "new.bin"


def test_write_missing_parent(root: Path) -> None:
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_write, "uploads/nodir/a.bin", ["uploads/"])
    assert not (root / "uploads" / "nodir").exists()


def test_write_parent_is_file(root: Path) -> None:
    (root / "uploads" / "f").write_bytes(b"")
    assert_error(2, PathResolver(root).resolve_write, "uploads/f/a.bin", ["uploads/"])


def test_write_target_is_directory(root: Path) -> None:
    (root / "uploads" / "d").mkdir()
    assert_error(2, PathResolver(root).resolve_write, "uploads/d", ["uploads/"])


def test_write_target_is_symlink(root: Path) -> None:
    (root / "uploads" / "l").symlink_to(root / "pxelinux.0")
    (root / "uploads" / "dangling").symlink_to(root / "uploads" / "missing")
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_write, "uploads/l", ["uploads/"])
    assert_error(2, resolver.resolve_write, "uploads/dangling", ["uploads/"])


def test_write_target_is_fifo(root: Path) -> None:
    os.mkfifo(root / "uploads" / "pipe")
    assert_error(2, PathResolver(root).resolve_write, "uploads/pipe", ["uploads/"])


def test_write_symlinked_subdir_escaping_prefix(root: Path) -> None:
    # uploads/boot -> ../sub: lexically under uploads/, really in sub/.
    (root / "uploads" / "boot").symlink_to(root / "sub")
    resolver = PathResolver(root)
    assert_error(2, resolver.resolve_write, "uploads/boot/pxelinux.0", ["uploads/"])
    # Both the name and the real directory must lie under the same prefix.
    assert_error(2, resolver.resolve_write, "uploads/boot/x", ["sub/", "uploads/"])


def test_write_prefix_symlinked_to_root_rejected(root: Path) -> None:
    (root / "up").symlink_to(root)
    assert_error(2, PathResolver(root).resolve_write, "up/sub/x", ["up/"])


def test_rel_name(root: Path) -> None:
    resolver = PathResolver(root, [BACKSLASH_TO_SLASH])
    assert resolver.rel_name("\\sub\\deep\\vmlinuz") == "sub/deep/vmlinuz"
    assert resolver.rel_name("./a//b/") == "a/b"


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    r = base / "root"
    (r / "a" / "b").mkdir(parents=True)
    (r / "a" / "f").write_bytes(b"f")
    (r / "a" / "b" / "g").write_bytes(b"g")
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_bytes(b"x")
    (r / "a" / "out").symlink_to(base / "etc")
    (r / "a" / "up").symlink_to("..")
    (r / "a" / "top").symlink_to("../..")
    (r / "a" / "in").symlink_to("b")
    return r


NAME_PARTS = st.sampled_from(
    ["a", "b", "f", "g", "out", "up", "top", "in", "etc", "passwd", ".", "..", "", "\\", "..\\"]
)
NAMES = st.one_of(
    st.text(),
    st.lists(NAME_PARTS, max_size=8).map("/".join),
    st.lists(NAME_PARTS, max_size=8).map("\\".join),
    st.text(alphabet="./\\ab\x00\udcff"),
)


@settings(max_examples=500, deadline=None)
@given(name=NAMES)
def test_resolve_read_never_escapes(fuzz_root: Path, name: str) -> None:
    for resolver in (PathResolver(fuzz_root), PathResolver(fuzz_root, [BACKSLASH_TO_SLASH])):
        try:
            path = resolver.resolve_read(name)
        except ResolveError as err:
            assert err.code in (1, 2)
            continue
        real_root = os.path.realpath(fuzz_root)
        assert os.path.commonpath([real_root, os.path.realpath(path)]) == real_root
        assert path.is_file()


def test_write_prefix_that_is_symlink_inside_root(root: Path) -> None:
    (root / "incoming").mkdir()
    (root / "drop").symlink_to("incoming")
    resolver = PathResolver(root)
    assert resolver.resolve_write("drop/a.bin", ["drop/"]) == root / "incoming" / "a.bin"
