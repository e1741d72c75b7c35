"""Every ```python block of README.md and of docs/*.md runs as written: alone, offline, in a fresh empty folder.

Each block is written to ``block.py`` in its own temporary folder and run in a new interpreter with
the model hubs switched off, so a block that uses a name defined in another block, a file it did not
write, a download or a package kpod_ops does not install fails here.

A block that cannot run as written (it needs a GPU, say) must say so where it stands: the line right
before its fence is the HTML comment ``<!-- test: skip REASON -->``, which Markdown does not render.
Such a block is reported as skipped with its reason, never dropped silently; the page should tell
its reader the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SKIP_MARK = re.compile(r"^\s*<!--\s*test:\s*skip\b\s*(.*?)\s*-->\s*$")
# fence languages the pages may use; code a user copies must be in ```python blocks
LANGUAGES = {"python", "bash", "json", "text", "toml", "yaml"}
BLOCK_TIMEOUT_S = 300  # a guard against a hang, not a timing assertion


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    section: str
    line: int
    lang: str
    code: str
    skip: str | None = None  # the reason given by a <!-- test: skip REASON --> marker

    @property
    def name(self) -> str:
        return f"{self.page}:L{self.line}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-')[:40]}"


def markdown_blocks(text: str, page: str = "page.md") -> list[Block]:
    """The fenced code blocks of a Markdown text with the title of the section each one is in and the
    reason of a skip marker on the line right before the fence, if any."""
    blocks: list[Block] = []
    section, lang, start, body, skip = "top", None, 0, [], None
    previous = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if lang is None:
            fence = re.match(r"^\s*```(.*)$", line)
            if fence:
                mark = SKIP_MARK.match(previous)
                lang, start, body, skip = fence.group(1).strip(), number, [], (mark.group(1) if mark else None)
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.strip() == "```":
            blocks.append(Block(page, section, start, lang, "\n".join(body) + "\n", skip))
            lang = None
        else:
            body.append(line)
        previous = line
    assert lang is None, f"{page}:{start}: unterminated code fence"
    return blocks


BLOCKS = [b for page in PAGES for b in markdown_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def test_parser_finds_blocks_sections_and_skip_markers():
    text = ("# A\n```python\nx = 1\n```\n## B c\ntext\n```bash\nls\n```\n```python\ny = 2\n\nz = 3\n```\n"
            "<!-- test: skip needs a CUDA GPU -->\n```python\nimport torch\n```\n")
    blocks = markdown_blocks(text)
    assert [(b.section, b.line, b.lang, b.code, b.skip) for b in blocks] == [
        ("A", 2, "python", "x = 1\n", None), ("B c", 7, "bash", "ls\n", None),
        ("B c", 10, "python", "y = 2\n\nz = 3\n", None), ("B c", 16, "python", "import torch\n", "needs a CUDA GPU")]


def test_readme_and_every_docs_page_are_read():
    pages = {b.page for b in PYTHON}
    assert "README.md" in pages
    assert len([p for p in pages if p.startswith("docs")]) >= 5, sorted(pages)


def test_every_fence_names_a_known_language_and_python_is_tagged_python():
    for b in BLOCKS:
        assert b.lang in LANGUAGES, f"{b.page}:{b.line}: fence language {b.lang!r}; use one of {sorted(LANGUAGES)}"
        if b.lang != "python":
            assert not re.search(r"^\s*(import |from \S+ import )", b.code, re.M), (
                f"{b.page}:{b.line}: Python code in a ```{b.lang} block; put code users copy in ```python")


def test_skip_markers_give_a_reason_and_stand_before_a_python_block():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            mark = SKIP_MARK.match(line)
            if mark:
                where = f"{page.relative_to(ROOT)}:{number}"
                assert len(mark.group(1)) > 10, f"{where}: a skip marker needs a reason"
                assert number < len(lines) and lines[number].strip() == "```python", (
                    f"{where}: a skip marker must be the line right before a ```python fence")


# The README's blocks run in the fast tier (the front door); the docs pages' blocks, each a fresh interpreter that
# imports the Hugging Face stack, in the slow tier (`--runslow`, as CI runs them): the fast tier stays under 3 minutes.
@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=() if b.page == "README.md" else pytest.mark.slow, id=b.name) for b in PYTHON],
)
def test_python_block_runs_alone(block: Block, tmp_path: Path):
    if block.skip is not None:
        pytest.skip(f"{block.page}:{block.line} is marked: {block.skip}")
    (tmp_path / "block.py").write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",  # nothing may be downloaded
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / ".hf"),  # no cache from an earlier run to lean on
        MPLBACKEND="Agg",
        TQDM_DISABLE="1",
    )
    res = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert res.returncode == 0, (
        f"{block.page}:{block.line} ({block.section}) failed:\n{block.code}\n--- stderr ---\n{res.stderr[-4000:]}")
