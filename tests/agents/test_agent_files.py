"""The directory side of the agent (``discoverd.agents.files``): which files are documents,
formats and digests, safe names, atomic writes and conflict copies — on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from discoverd.agents import files
from discoverd.agents.files import Content, DocumentError, UnsafeName


def test_document_files_and_their_names(tmp_path: Path) -> None:
    root = tmp_path
    assert files.name_of(root, root / "app.json") == ("app", "json")
    assert files.name_of(root, root / "team" / "db.toml") == ("team/db", "toml")
    for ignored in ("app.json~", ".app.json.swp", "4913", "notes.txt", ".hidden/app.json",
                    "app.json.conflict-r7", ".json", "x/.json"):
        assert files.name_of(root, root / ignored) is None, ignored
    assert files.name_of(root, tmp_path.parent / "app.json") is None


def test_scan_lists_documents_json_first(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".state").mkdir()
    for rel in ("a.json", "a.toml", "sub/b.json", ".state/c.json", "d.txt"):
        (tmp_path / rel).write_text("{}")
    found = files.scan(tmp_path)
    assert sorted(found) == ["a", "sub/b"]
    assert [fmt for _, fmt in found["a"]] == ["json", "toml"]


@pytest.mark.parametrize("name", ["../x", "a/../../x", "./x", ".hidden", "a//b", "", "a/",
                                  "a\\b", "a\x00b"])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeName):
        files.path_of(tmp_path, name, "json")


def test_digest_ignores_formatting_and_format() -> None:
    pretty = files.parse_file(b'{\n  "b": [1, 2],\n  "a": "x"\n}\n', "json")
    compact = files.parse_file(b'{"a":"x","b":[1,2]}', "json")
    toml = files.parse_file(b'a = "x"\nb = [1, 2]\n', "toml")
    assert pretty.digest == compact.digest == toml.digest
    assert pretty.value == b'{\n  "b": [1, 2],\n  "a": "x"\n}'  # the author's text is sent
    assert files.parse_file(b'{"a": "y"}', "json").digest != compact.digest


@pytest.mark.parametrize(("raw", "fmt", "why"), [
    (b'{"a": 1', "json", "not JSON"),
    (b"[1, 2]", "json", "JSON object"),
    (b'{"a": NaN}', "json", "not JSON"),
    (b"\xff\xfe", "json", "UTF-8"),
    (b"a = ", "toml", "not TOML"),
    (b"when = 1979-05-27T07:32:00Z", "toml", "date/time"),
    (b"x = inf", "toml", "no JSON form"),
])
def test_what_is_not_a_document(raw: bytes, fmt: str, why: str) -> None:
    with pytest.raises(DocumentError, match=why):
        files.parse_file(raw, fmt)


def test_render_json_and_toml() -> None:
    doc = Content.of({"name": "api", "limits": {"rps": 5}})
    assert files.render(doc, "json") == \
        b'{\n  "name": "api",\n  "limits": {\n    "rps": 5\n  }\n}\n'
    assert files.parse_file(files.render(doc, "toml"), "toml").digest == doc.digest
    with pytest.raises(DocumentError, match="TOML"):
        files.render(Content.of({"a": None}), "toml")
    with pytest.raises(DocumentError):
        files.parse_remote(b'"just a string"')


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "app.json"
    files.write_atomic(target, b"one")
    inode = target.stat().st_ino
    files.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.json"]


def test_write_atomic_cleans_up_when_the_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "app.json"
    target.mkdir()  # a directory in the way: the rename fails
    (target / "inside").write_bytes(b"x")
    with pytest.raises(IsADirectoryError):
        files.write_atomic(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.json"]  # no temp file left


def test_keep_copy_and_remove(tmp_path: Path) -> None:
    target = tmp_path / "app.json"
    assert files.keep_copy(target, "r3") is None
    target.write_bytes(b"mine")
    copy = files.keep_copy(target, "r3")
    assert copy == tmp_path / "app.json.conflict-r3"
    assert copy.read_bytes() == b"mine"
    assert files.name_of(tmp_path, copy) is None  # never synced
    assert files.remove(target) is True
    assert files.remove(target) is False
