"""benchmarks/report.py: a `--quick` smoke run writes its own git-ignored doc, so it never overwrites the
evidence a full run left in docs/benchmarks.md; a section is replaced in place, others kept."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def report(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("report_bench", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DOCS", tmp_path)
    return module


def test_quick_run_writes_its_own_doc_and_leaves_the_evidence(report, tmp_path):
    full = report.write_section("benchmarks.md", "scale", "## Scale\n\nfull numbers", title="mupath benchmarks")
    report.write_section("benchmarks.md", "speed", "## Speed\n\nspeed numbers")
    quick = report.write_section("benchmarks.md", "scale", "## Scale\n\nsmoke numbers", title="mupath benchmarks",
                                 quick=True)
    assert full == tmp_path / "benchmarks.md" and quick == tmp_path / "benchmarks-quick.md"
    evidence = full.read_text()
    assert "full numbers" in evidence and "speed numbers" in evidence and "smoke" not in evidence
    smoke = quick.read_text()
    assert smoke.startswith("# mupath benchmarks (smoke runs") and "smoke numbers" in smoke


def test_a_section_is_replaced_in_place(report):
    path = report.write_section("benchmarks.md", "a", "first A", title="t")
    report.write_section("benchmarks.md", "b", "only B")
    report.write_section("benchmarks.md", "a", "second A")
    text = path.read_text()
    assert "first A" not in text and text.index("second A") < text.index("only B")
    assert text.count("<!-- a:begin -->") == 1


def test_quick_docs_are_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "docs/*-quick.md" in ignored and "docs/img/*_quick.png" in ignored
    assert "docs/img/*_quick_*.png" in ignored         # scale's plots: <stem>_quick_<kind>.png


def test_quick_plots_get_their_own_names(report):
    assert report.img_suffix(True) == "_quick" and report.img_suffix(False) == ""
