"""Pictures of a rationale with each token shaded by its weight (HTML and PNG), like paper Fig. 2."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._optional import require
from ..errors import bad_input


def token_pieces(token_ids: Sequence[int], tokenizer: object) -> list[str]:
    """The text each token adds, found by decoding growing prefixes (keeps SentencePiece spaces)."""
    if not hasattr(tokenizer, "decode"):
        raise bad_input("tokenizer", "an object with decode(ids)", type(tokenizer).__name__)
    ids = [int(t) for t in token_ids]
    pieces, prev = [], ""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k])
        if text.startswith(prev):
            pieces.append(text[len(prev) :])
        else:  # an incomplete multi-byte character changed earlier text: fall back to this token alone
            pieces.append(tokenizer.decode(ids[k - 1 : k]))
        prev = text
    return pieces


def _prepare(token_ids, weights) -> tuple[list[int], np.ndarray]:
    if hasattr(token_ids, "rationale_ids"):
        token_ids = token_ids.rationale_ids
    ids = [int(t) for t in token_ids]
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(ids),):
        raise bad_input("weights", f"shape ({len(ids)},) (one weight per token)", w.shape)
    return ids, w


def render_html(token_ids, weights, tokenizer: object, *, title: str | None = None, vmax: float | None = None) -> str:
    """A standalone HTML fragment: every token on a background whose intensity is its weight.

    ``token_ids`` is a TokenizedExample (its rationale) or a sequence of ids; hovering a token
    shows its weight. ``vmax`` sets the weight drawn darkest (default: max(1, max weight)).
    """
    ids, w = _prepare(token_ids, weights)
    top = vmax or max(1.0, float(w.max(initial=0.0)))
    spans = []
    for piece, v in zip(token_pieces(ids, tokenizer), w):
        a = min(max(v / top, 0.0), 1.0)
        color = "#fff" if a > 0.6 else "#000"
        text = html.escape(piece).replace("\n", "↵<br>")
        spans.append(
            f'<span title="{v:.3f}" style="background: rgba(214, 39, 40, {a:.3f}); color: {color}; '
            f'white-space: pre-wrap; border-radius: 2px">{text}</span>'
        )
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    return f'<div class="kpod-weights" style="font-family: monospace; line-height: 1.8">{head}{"".join(spans)}</div>'


def render_png(
    token_ids,
    weights,
    tokenizer: object,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    width_chars: int = 80,
    vmax: float | None = None,
) -> Path:
    """Draw the shaded rationale with a colour bar into a PNG.

    Draws on its own ``Figure`` with an Agg canvas, so the caller's matplotlib backend and pyplot
    state are left alone.
    """
    require("matplotlib", extra="plots", feature="render_png")
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ids, w = _prepare(token_ids, weights)
    top = vmax or max(1.0, float(w.max(initial=0.0)))
    cmap, norm = colormaps["Reds"], Normalize(0.0, top)
    lines: list[list[tuple[str, float]]] = [[]]
    col = 0
    for piece, v in zip(token_pieces(ids, tokenizer), w):
        piece = piece.replace("\n", "↵") or "∅"
        if col + len(piece) > width_chars and lines[-1]:
            lines.append([])
            col = 0
        lines[-1].append((piece, float(v)))
        col += len(piece)
    char_w, line_h = 0.1, 0.3  # inches per character / line
    fig_w = width_chars * char_w + 1.2
    fig_h = len(lines) * line_h + 0.9 + (0.3 if title else 0)
    fig = Figure(figsize=(fig_w, fig_h), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.02, 0.05, (width_chars * char_w) / fig_w, 1 - 0.1 - (0.3 / fig_h if title else 0)])
    ax.set_xlim(0, width_chars)
    ax.set_ylim(len(lines), 0)
    ax.axis("off")
    for r, line in enumerate(lines):
        x = 0
        for piece, v in line:
            ax.add_patch(Rectangle((x, r + 0.1), len(piece), 0.8, color=cmap(norm(v)), linewidth=0))
            ax.text(
                x,
                r + 0.5,
                piece,
                va="center",
                ha="left",
                family="monospace",
                fontsize=9,
                color="white" if norm(v) > 0.6 else "black",
            )
            x += len(piece)
    if title:
        fig.suptitle(title, fontsize=10)
    cax = fig.add_axes([1 - 0.9 / fig_w, 0.1, 0.15 / fig_w, 0.8])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="weight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
