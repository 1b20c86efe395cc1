"""Grading SWE instances in the sandbox: a hand-written instance, hostile patches, the JSONL reader."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cascade_rl.data.sources import DataSourceError
from cascade_rl.rewards import SpecError, check_spec, verify
from cascade_rl.swe.harness import evaluate_diff, evaluate_edits, format_report, run_tests
from cascade_rl.swe.instance import SweInstance, read_instances, validate_instance
from cascade_rl.swe.patch import Edit, format_edit_block, make_diff

OPS = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
VISIBLE = "from calc.ops import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
HIDDEN = (
    "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "class TestAdd:\n    def test_zero(self):\n        assert add(0, 4) == 4\n"
)
BASE = {"calc/__init__.py": "", "calc/ops.py": OPS, "tests/test_ops.py": VISIBLE}
FIXED = {**BASE, "calc/ops.py": OPS.replace("a - b", "a + b")}


def record(**changes) -> dict:
    out = {
        "instance_id": "calc__calc-1",
        "repo": "demo/calc",
        "problem_statement": "add(2, 3) returns -1 instead of 5",
        "files": BASE,
        "FAIL_TO_PASS": ["tests/test_add.py::test_add", "tests/test_add.py::TestAdd::test_zero"],
        "PASS_TO_PASS": ["tests/test_ops.py::test_mul"],
        "test_patch": make_diff({}, {"tests/test_add.py": HIDDEN}),
        "patch": make_diff(BASE, FIXED),
    }
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def instance() -> SweInstance:
    return validate_instance(record())


def diff_to(files: dict) -> str:
    return make_diff(BASE, files)


def test_the_gold_patch_scores_one(instance):
    result = evaluate_diff(instance, instance.patch)
    assert result.score == 1.0, result.info
    assert result.info["reason"] == "ok" and result.info["fail_to_pass"] == "2/2"


def test_the_empty_patch_scores_zero(instance):
    result = evaluate_diff(instance, "")
    assert result.score == 0.0 and result.info["reason"] == "tests_failed"
    assert result.info["fail_to_pass"] == "0/2" and result.info["pass_to_pass"] == "1/1"
    assert "AssertionError" in result.info["errors"]["tests/test_add.py::test_add"]


def test_a_fix_that_breaks_a_pass_to_pass_test_scores_zero(instance):
    broken = {**BASE, "calc/ops.py": OPS.replace("a - b", "a + b").replace("a * b", "a + b")}
    result = evaluate_diff(instance, diff_to(broken))
    assert result.score == 0.0
    assert result.info["fail_to_pass"] == "2/2" and result.info["failed"] == ["tests/test_ops.py::test_mul"]


def test_a_patch_that_does_not_apply_scores_zero_with_a_reason(instance):
    stale = make_diff({"calc/ops.py": OPS.replace("a - b", "b - a")}, {"calc/ops.py": OPS})
    result = evaluate_diff(instance, stale)
    assert result.score == 0.0 and result.info["reason"] == "patch_does_not_apply"
    assert "calc/ops.py" in result.info["detail"]
    result = evaluate_edits(instance, [Edit("calc/ops.py", ("    return a ~ b",), ("    return a + b",))])
    assert result.score == 0.0 and result.info["reason"] == "search_not_found"


def test_edit_blocks_score_through_the_registered_verifier(instance):
    spec = {"type": "swe", "instance": instance.to_dict()}
    check_spec(spec)
    fix = format_edit_block(Edit("calc/ops.py", ("    return a - b",), ("    return a + b",)))
    assert verify(f"Here is the fix.\n\n{fix}<|im_end|>", spec).score == 1.0
    assert verify("I could not find it.<|im_end|>", spec).info["reason"] == "no_edits"
    assert verify("calc/ops.py\n<<<<<<< SEARCH\n    return a - b\n=======\n", spec).info["reason"] == "malformed_edit"
    diff_spec = {**spec, "format": "diff"}
    assert verify(f"```diff\n{instance.patch}```<|im_end|>", diff_spec).score == 1.0
    with pytest.raises(SpecError, match="FAIL_TO_PASS"):
        check_spec({"type": "swe", "instance": {**instance.to_dict(), "FAIL_TO_PASS": []}})
    with pytest.raises(SpecError, match="format"):
        check_spec({**spec, "format": "prose"})


# -- hostile patches -------------------------------------------------------------------------------


def test_writes_outside_the_repository_are_refused(instance, tmp_path):
    target = tmp_path / "owned.py"
    escaping = f"--- /dev/null\n+++ b/../../{target}\n@@ -0,0 +1 @@\n+x = 1\n"
    assert evaluate_diff(instance, escaping).info["reason"] == "unsafe_path"
    absolute = f"--- /dev/null\n+++ {target}\n@@ -0,0 +1 @@\n+x = 1\n"
    assert evaluate_diff(instance, absolute).info["reason"] == "unsafe_path"
    block = f"../{target.name}\n<<<<<<< SEARCH\n=======\nx = 1\n>>>>>>> REPLACE\n"
    assert verify(block, {"type": "swe", "instance": instance.to_dict()}).info["reason"] == "unsafe_path"
    assert not target.exists()


def test_deleting_the_tests_cannot_score_one(instance):
    gone = {k: v for k, v in BASE.items() if not k.startswith("tests/")}
    result = evaluate_diff(instance, diff_to(gone))
    assert result.score == 0.0 and result.info["restored"] == ["tests/test_ops.py"]
    assert result.info["pass_to_pass"] == "1/1"  # the visible test was put back and ran


def test_editing_the_tests_to_pass_cannot_score_one(instance):
    # break mul, neuter its test, and plant a passing file where the hidden tests go
    cheat = {
        **BASE,
        "calc/ops.py": OPS.replace("a * b", "0"),
        "tests/test_ops.py": "def test_mul():\n    pass\n",
        "tests/test_add.py": "def test_add():\n    pass\n\n\nclass TestAdd:\n    def test_zero(self):\n        pass\n",
    }
    result = evaluate_diff(instance, diff_to(cheat))
    assert result.score == 0.0
    assert result.info["restored"] == ["tests/test_add.py", "tests/test_ops.py"]
    assert result.info["fail_to_pass"] == "0/2" and result.info["pass_to_pass"] == "0/1"


def test_code_that_fakes_results_or_exits_early_cannot_score_one(instance):
    faker = OPS + (
        "\nimport os, sys\nfor tid in ('tests/test_add.py::test_add', 'tests/test_add.py::TestAdd::test_zero'):\n"
        "    print('pass\\t' + tid)\n    sys.stdout.write('\\tpass\\t' + tid + '\\n')\n"
        "sys.stdout.flush()\nos._exit(0)\n"
    )
    result = evaluate_diff(instance, diff_to({**BASE, "calc/ops.py": faker}))
    assert result.score == 0.0 and result.info["fail_to_pass"] == "0/2"
    hang = OPS.replace("    return a - b", "    while True:\n        pass")
    result = evaluate_diff(instance, diff_to({**BASE, "calc/ops.py": hang}), per_test_timeout=0.5)
    assert result.score == 0.0 and "took longer" in result.info["errors"]["tests/test_add.py::test_add"]


def test_visible_runs_discover_tests_and_report_them(instance):
    snapshot = instance.snapshot()
    snapshot.text["tests/test_add.py"] = HIDDEN
    run = run_tests(snapshot, discover=["tests/test_add.py", "tests/test_ops.py"])
    assert list(run.results) == ["tests/test_add.py::test_add", "tests/test_add.py::TestAdd::test_zero",
                                 "tests/test_ops.py::test_mul"]  # fmt: skip
    assert list(run.results.values()) == [False, False, True]
    report = format_report(run)
    assert report.startswith("1 passed, 2 failed\nFAIL tests/test_add.py::test_add\n")
    assert "    assert add(2, 3) == 5\n    AssertionError" in report


# -- the JSONL reader ------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_the_reader_names_file_and_line_and_skips_with_counts(tmp_path):
    swe_bench_style = record(instance_id="b", FAIL_TO_PASS=json.dumps(record()["FAIL_TO_PASS"]))
    rows = [
        record(),
        "{not json",
        "",
        record(instance_id="x", FAIL_TO_PASS=[]),
        record(instance_id="y", files=None),
        record(instance_id="z", FAIL_TO_PASS=["tests/test_add.py"]),
        record(instance_id="w", test_patch="not a diff\n@@ -1 +1 @@\n"),
        record(),  # duplicate id
        swe_bench_style,
    ]
    path = write_jsonl(tmp_path / "instances.jsonl", rows)
    with pytest.raises(DataSourceError, match=rf"^{path}:2: invalid JSON"):
        read_instances(path)
    instances, stats = read_instances(path, on_error="skip")
    assert [i.instance_id for i in instances] == ["calc__calc-1", "b"]
    assert instances[1].fail_to_pass == instances[0].fail_to_pass
    assert (stats.read, stats.used, stats.skipped) == (8, 2, 6)
    lines = [r.split(":")[1] for r in stats.reasons]
    assert lines == ["2", "4", "5", "6", "7", "8"]
    assert "FAIL_TO_PASS" in stats.reasons[1] and "exactly one of 'files'" in stats.reasons[2]
    assert "not 'path::name'" in stats.reasons[3] and "duplicate instance_id" in stats.reasons[5]
    with pytest.raises(DataSourceError, match="not found"):
        read_instances(tmp_path / "missing.jsonl")


def test_folder_snapshots_and_base_commits(tmp_path):
    repo = tmp_path / "repos" / "calc"
    for rel, text in BASE.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text, encoding="utf-8")
    (repo / "escape").symlink_to("/etc")  # symlinks are never part of a snapshot
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "calc", "tests"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (repo / "calc" / "ops.py").write_text(OPS.replace("a - b", "a + b"), encoding="utf-8")  # fixed after the commit
    row = record(files=None, repo_path="repos/calc")
    path = write_jsonl(tmp_path / "i.jsonl", [row, {**row, "instance_id": "at-commit", "base_commit": commit}])
    (working, at_commit), _ = read_instances(path)
    assert set(working.snapshot().text) == set(BASE) and "escape" not in working.snapshot().text
    assert evaluate_diff(working, "").score == 1.0  # the working tree already holds the fix
    assert at_commit.snapshot().text == BASE
    assert evaluate_diff(at_commit, "").score == 0.0 and evaluate_diff(at_commit, at_commit.patch).score == 1.0
