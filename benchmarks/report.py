"""Writing benchmark results into docs: each benchmark owns a section between markers, rewritten on
every run, headed by the machine, versions, command and date."""
from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def environment() -> str:
    import torch
    import timm
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
            f"- machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores\n"
            f"- versions: Python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}\n"
            f"- command: `{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`\n")


QUICK_SUFFIX = "-quick"


def section_doc(doc: str, quick: bool) -> str:
    """The doc a run writes: a `--quick` smoke run writes docs/NAME-quick.md (git-ignored), so it can never
    overwrite the evidence a full run left in docs/NAME.md."""
    stem, dot, ext = doc.rpartition(".")
    return f"{stem}{QUICK_SUFFIX}.{ext}" if quick and dot else doc


def img_suffix(quick: bool) -> str:
    """Appended to a plot's file name by a --quick run (docs/img/*_quick.png, git-ignored), so a smoke
    run never replaces a plot the full run's section links to."""
    return "_quick" if quick else ""


def write_section(doc: str, name: str, body: str, title: str | None = None, *, quick: bool = False) -> Path:
    """Replace (or append) the section `name` of docs/`doc` (docs/`doc`-quick with `quick`) with `body`."""
    path = DOCS / section_doc(doc, quick)
    if quick:
        title = f"{title or doc} (smoke runs: small budgets, not evidence)"
    text = path.read_text() if path.exists() else f"# {title or doc}\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
