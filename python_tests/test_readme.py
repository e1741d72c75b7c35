"""Every ```python block of the README runs as written: alone, offline, in a fresh empty folder.

Each block is written to ``block.py`` in its own temporary folder and run in a new interpreter with
the model hubs switched off, so a block that uses a name defined in another block, a file it did not
write, a download or a package kpod_ops does not install fails here. The only blocks not run are the
ones listed in ``SKIPPED``, each with its reason.
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
README = ROOT / "README.md"

# Blocks that are not run, keyed by the title of the README section that holds them, with the reason.
SKIPPED: dict[str, str] = {}

# fence languages the README may use; code a user copies must be in ```python blocks
LANGUAGES = {"python", "bash", "json", "text", "toml"}
BLOCK_TIMEOUT_S = 300  # a guard against a hang, not a timing assertion


@dataclass(frozen=True)
class Block:
    section: str
    line: int
    lang: str
    code: str

    @property
    def name(self) -> str:
        return f"L{self.line}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-')[:50]}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text with the title of the section each one is in."""
    blocks: list[Block] = []
    section, lang, start, body = "top", None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if lang is None:
            fence = re.match(r"^\s*```(.*)$", line)
            if fence:
                lang, start, body = fence.group(1).strip(), number, []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.strip() == "```":
            blocks.append(Block(section, start, lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"README.md:{start}: unterminated code fence"
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def test_readme_parser_finds_blocks_and_sections():
    text = "# A\n```python\nx = 1\n```\n## B c\ntext\n```bash\nls\n```\n```python\ny = 2\n\nz = 3\n```\n"
    blocks = readme_blocks(text)
    assert [(b.section, b.line, b.lang, b.code) for b in blocks] == [
        ("A", 2, "python", "x = 1\n"), ("B c", 7, "bash", "ls\n"), ("B c", 10, "python", "y = 2\n\nz = 3\n")]


def test_every_fence_names_a_known_language_and_python_is_tagged_python():
    assert len(PYTHON) >= 5
    for b in BLOCKS:
        assert b.lang in LANGUAGES, f"README.md:{b.line}: fence language {b.lang!r}; use one of {sorted(LANGUAGES)}"
        if b.lang != "python":
            assert not re.search(r"^\s*(import |from \S+ import )", b.code, re.M), (
                f"README.md:{b.line}: Python code in a ```{b.lang} block; put code users copy in ```python")


def test_skip_list_names_existing_sections_with_reasons():
    sections = {b.section for b in PYTHON}
    for section, reason in SKIPPED.items():
        assert section in sections, f"SKIPPED names {section!r}, which holds no python block"
        assert len(reason) > 10, f"SKIPPED[{section!r}] needs a reason"


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_readme_python_block_runs_alone(block: Block, tmp_path: Path):
    if block.section in SKIPPED:
        pytest.skip(SKIPPED[block.section])
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
        f"README.md:{block.line} ({block.section}) failed:\n{block.code}\n--- stderr ---\n{res.stderr[-4000:]}")
