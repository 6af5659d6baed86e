"""Pictures of a selection: a contact sheet of the chosen images and a 2-D map of the embedding.

The map is t-SNE (van der Maaten & Hinton, 2008) of the L2-normalised features after a PCA to 50
dimensions, on at most ``MAX_MAPPED`` images (a seeded sample, always including the marked ones):
PCA alone shows the directions of largest variance, which in a contrastive embedding rarely
separate its clusters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import atomic_write
from ..data import ImageSet

MAX_MAPPED = 5000
MAX_SHEET = 100  # images on a contact sheet
THUMB = 64  # pixels per thumbnail


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE coordinates of L2-normalised ``features`` (PCA to 50 dimensions first)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (x.shape[0] - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def mapped_sample(n: int, keep: np.ndarray, seed: int = 0, limit: int = MAX_MAPPED) -> np.ndarray:
    """Sorted rows to map: all of ``keep`` (up to ``limit``) plus a seeded sample of the others."""
    keep = np.unique(np.asarray(keep, dtype=np.int64))[:limit]
    if n <= limit:
        return np.arange(n)
    others = np.setdiff1d(np.arange(n), keep)
    extra = np.random.default_rng([11, seed]).choice(others, limit - len(keep), replace=False)
    return np.sort(np.concatenate([keep, extra]))


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_map(xy: np.ndarray, path: Path, title: str, colour: np.ndarray | None = None,
             colour_names: Sequence[str] | None = None, chosen: np.ndarray | None = None,
             labeled: np.ndarray | None = None) -> Path:
    """A scatter of ``xy``: points coloured by ``colour`` (cluster or class ids; -1 and None grey), the
    ``chosen`` rows as red stars and the ``labeled`` rows as black crosses."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    grey = np.ones(len(xy), dtype=bool) if colour is None else colour < 0
    ax.scatter(xy[grey, 0], xy[grey, 1], s=5, c="0.75", linewidths=0)
    legend = None
    if colour is not None and (~grey).any():
        cmap = "tab10" if colour.max(initial=0) < 10 else "tab20"
        scatter = ax.scatter(xy[~grey, 0], xy[~grey, 1], s=5, c=colour[~grey] % 20, cmap=cmap, vmin=0,
                             vmax=9 if cmap == "tab10" else 19, linewidths=0, alpha=0.6)
        if colour_names is not None and len(colour_names) <= 20:
            handles, _ = scatter.legend_elements()
            legend = ax.legend(handles, list(colour_names)[:len(handles)], fontsize=7, markerscale=0.8, loc="best")
    if labeled is not None and len(labeled):
        ax.scatter(xy[labeled, 0], xy[labeled, 1], s=40, marker="x", c="black", label="labeled before")
    if chosen is not None and len(chosen):
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=90, marker="*", c="red", edgecolors="black",
                   linewidths=0.5, label="chosen")
    if legend is not None:
        ax.add_artist(legend)
    if (chosen is not None and len(chosen)) or (labeled is not None and len(labeled)):
        ax.legend(handles=[h for h in ax.collections[-2:] if h.get_label() in ("chosen", "labeled before")],
                  fontsize=8, loc="lower right")
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    save_figure(fig, path)
    return path


def contact_sheet(images: ImageSet, rows: Sequence[int], path: Path, captions: Sequence[str]) -> Path:
    """The images at ``rows`` (at most ``MAX_SHEET``) as captioned thumbnails on one PNG."""
    from PIL import Image, ImageDraw

    from ..data import BadImage

    rows = list(rows)[:MAX_SHEET]
    columns = min(10, max(1, len(rows)))
    lines = (len(rows) + columns - 1) // columns
    cell_h = THUMB + 14
    sheet = Image.new("RGB", (columns * (THUMB + 4) + 4, max(lines, 1) * (cell_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (row, caption) in enumerate(zip(rows, captions)):
        x, y = 4 + (k % columns) * (THUMB + 4), 4 + (k // columns) * (cell_h + 4)
        try:
            thumb = Image.fromarray(images.load(row, THUMB))
            thumb.thumbnail((THUMB, THUMB), Image.NEAREST if max(thumb.size) < THUMB else Image.BICUBIC)
            if max(thumb.size) < THUMB:  # small images (digits): blow up with nearest neighbour
                scale = THUMB / max(thumb.size)
                thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                                     Image.NEAREST)
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        except BadImage:
            draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline="red")
        draw.text((x + 2, y + THUMB + 1), caption, fill="black")
    atomic_write(path, lambda f: sheet.save(f, format="PNG"))
    return path
