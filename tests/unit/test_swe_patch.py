"""Edit blocks and unified diffs on repository snapshots: parsing, applying, refusing unsafe paths."""

from __future__ import annotations

import pytest

from cascade_rl.swe.patch import (
    Edit,
    PatchError,
    apply_diff,
    apply_edits,
    clean_path,
    format_edit_block,
    make_diff,
    parse_edit_blocks,
)

SOURCE = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"


def reason(fn, *args) -> str:
    with pytest.raises(PatchError) as err:
        fn(*args)
    return err.value.reason


# -- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../x.py", "a/../../x.py", "/etc/passwd", "C:/x.py", "a\\b.py", "", ".git/config",
                                  "~/x", "a/\x00.py", "./.."])  # fmt: skip
def test_paths_that_could_escape_are_refused(path):
    assert reason(clean_path, path) == "unsafe_path"


def test_paths_are_normalised():
    assert clean_path("./pkg//mod.py") == "pkg/mod.py"
    assert clean_path(" pkg/mod.py ") == "pkg/mod.py"


# -- edit blocks -----------------------------------------------------------------------------------


def test_edit_blocks_parse_with_fences_labels_and_prose_around():
    text = (
        "The bug is in add.\n\n```python\n### calc/ops.py\n<<<<<<< SEARCH\n    return a - b\n=======\n"
        "    return a + b\n>>>>>>> REPLACE\n```\n\nAnd a new file:\n\n`calc/new.py`\n<<<<<<< SEARCH\n=======\n"
        "X = 1\n>>>>>>> REPLACE\n"
    )
    assert parse_edit_blocks(text) == [
        Edit("calc/ops.py", ("    return a - b",), ("    return a + b",)),
        Edit("calc/new.py", (), ("X = 1",)),
    ]


def test_format_edit_block_round_trips():
    edit = Edit("pkg/a.py", ("x = 1", "", "y = 2"), ("x = 3",))
    assert parse_edit_blocks(format_edit_block(edit)) == [edit]
    assert parse_edit_blocks("no blocks here") == []


@pytest.mark.parametrize(
    "text",
    [
        "a.py\n<<<<<<< SEARCH\nx\n=======\ny\n",  # cut short: no REPLACE
        "a.py\n<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n",  # no divider
        "<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n",  # no path
        "a.py\n=======\n",  # stray divider
        "a.py\n<<<<<<< SEARCH\nx\n<<<<<<< SEARCH\n=======\ny\n>>>>>>> REPLACE\n",  # nested
    ],
)
def test_malformed_blocks_are_an_error(text):
    assert reason(parse_edit_blocks, text) == "malformed_edit"


def test_a_block_naming_an_escaping_path_is_refused():
    assert reason(parse_edit_blocks, "../evil.py\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n") == "unsafe_path"


def test_apply_edits_matches_once_forgiving_trailing_whitespace():
    files = {"m.py": SOURCE}
    apply_edits(files, [Edit("m.py", ("    return a - b   ",), ("    return a + b",))])
    assert files["m.py"] == SOURCE.replace("a - b", "a + b")


def test_failed_edits_leave_the_files_unchanged():
    files = {"m.py": SOURCE}
    good = Edit("m.py", ("    return a - b",), ("    return a + b",))
    assert reason(apply_edits, files, [good, Edit("m.py", ("nope",), ())]) == "search_not_found"
    assert files == {"m.py": SOURCE}
    assert reason(apply_edits, files, [Edit("m.py", ("",), ("x",))]) == "ambiguous_search"
    assert reason(apply_edits, files, [Edit("other.py", ("x",), ("y",))]) == "file_not_found"
    assert reason(apply_edits, files, [Edit("m.py", (), ("x",))]) == "search_not_found"  # empty SEARCH on a file
    assert reason(apply_edits, files, [Edit("m.py", ("return a - b",), ())]) == "search_not_found"  # indentation


# -- unified diffs ---------------------------------------------------------------------------------


def test_make_diff_and_apply_diff_round_trip_every_kind_of_change():
    old = {"a.py": SOURCE, "gone.py": "x = 1\n", "tail.py": "last line without newline"}
    new = {"a.py": SOURCE.replace("a * b", "b * a"), "new/b.py": "y = 2\n", "tail.py": "changed\n"}
    diff = make_diff(old, new)
    files = dict(old)
    assert sorted(apply_diff(files, diff)) == ["a.py", "gone.py", "new/b.py", "tail.py"]
    assert files == new
    back = dict(new)
    apply_diff(back, make_diff(new, old))
    assert back == old


def test_hunks_are_found_when_lines_moved():
    diff = make_diff({"a.py": SOURCE}, {"a.py": SOURCE.replace("a * b", "a ** b")})
    shifted = {"a.py": "import os\nimport sys\n\n" + SOURCE}
    apply_diff(shifted, diff)
    assert shifted["a.py"] == "import os\nimport sys\n\n" + SOURCE.replace("a * b", "a ** b")


def test_diffs_that_do_not_apply_or_escape_are_refused():
    diff = make_diff({"a.py": SOURCE}, {"a.py": SOURCE.replace("a - b", "a + b")})
    files = {"a.py": SOURCE.replace("a - b", "b - a")}
    assert reason(apply_diff, files, diff) == "patch_does_not_apply"
    assert reason(apply_diff, {}, diff) == "patch_does_not_apply"
    escaping = "--- a/../x.py\n+++ b/../x.py\n@@ -1 +1 @@\n-a\n+b\n"
    assert reason(apply_diff, {"x.py": "a\n"}, escaping) == "unsafe_path"
    absolute = "--- /dev/null\n+++ /tmp/owned.py\n@@ -0,0 +1 @@\n+x\n"
    assert reason(apply_diff, {}, absolute) == "unsafe_path"
    rename = "diff --git a/a.py b/b.py\nrename from a.py\nrename to b.py\n"
    assert reason(apply_diff, {"a.py": ""}, rename) == "unsupported_patch"
    assert reason(apply_diff, {"a.py": SOURCE}, "--- a/a.py\n+++ b/a.py\n@@ -1,3 +1,3 @@\n def add(a, b):\n") == (
        "malformed_patch"
    )
