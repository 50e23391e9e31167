"""A 2-D map of stored CNN codes: t-SNE (PCA when there are too few images), one colour per class."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TltoolError
from ..features import FeatureSet, load_features
from ..plotting import pyplot, save_figure
from ..progress import say
from ..report import write_picture_report
from ..runs import check_run_dir, new_run_dir, writes_runs
from ..settings import check_range
from .plots import thumbnail

MIN_TSNE = 30  # below this many images t-SNE's neighbourhoods are meaningless: PCA instead
PCA_BEFORE_TSNE = 50
MAX_THUMBNAILS = 400
MARKERS = {"train": "o", "val": "^", "test": "s"}


@dataclass
class Embedding:
    coords: np.ndarray  # (n, 2)
    method: str
    params: dict
    features: FeatureSet
    neighbour_agreement: float  # share of images whose nearest neighbour in the map has the same label
    run_dir: Path | None = None
    png: Path | None = None


def embed(X: np.ndarray, method: str = "auto", perplexity: float = 30.0, seed: int = 0) -> tuple[np.ndarray, str, dict]:
    """(n, d) features -> (n, 2) coordinates, standardised first; t-SNE on the top principal components."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    n = len(X)
    if n < 3:
        raise TltoolError(f"a map needs at least 3 images; the features hold {n}.")
    if not (perplexity > 0 and math.isfinite(perplexity)):
        raise TltoolError(f"--perplexity must be a number above 0 (about the neighbours each image keeps), got "
                          f"{perplexity}.")
    Z = StandardScaler().fit_transform(X)
    if method == "auto":
        method = "tsne" if n >= MIN_TSNE else "pca"
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(Z)
        return coords, "pca", {"explained_variance": [float(v) for v in pca.explained_variance_ratio_]}
    if method != "tsne":
        raise TltoolError(f"--method must be auto, tsne or pca, got {method!r}.")
    from sklearn.manifold import TSNE

    k = min(PCA_BEFORE_TSNE, n - 1, Z.shape[1])
    reduced = PCA(n_components=k, random_state=seed).fit_transform(Z)
    given, perplexity = perplexity, float(min(perplexity, (n - 1) / 3))
    if perplexity < given:  # lowered without a word, a --perplexity 100 drew the very map of the default 30
        say(f"t-SNE perplexity {given:g} lowered to {perplexity:.1f}: it must stay below a third of the {n} images")
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    coords = tsne.fit_transform(reduced)
    return coords, "tsne", {"perplexity": perplexity, "perplexity_given": float(given), "pca_components": int(k),
                            "kl_divergence": float(tsne.kl_divergence_)}


def nearest_agreement(coords: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(coords)
    return float((labels[idx[:, 1]] == labels).mean())


def plot_embedding(emb: Embedding, target: Path, thumbnails: bool = False, title: str = "") -> None:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    plt = pyplot()
    fs, xy = emb.features, emb.coords
    colours = plt.get_cmap("tab10" if len(fs.classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(9, 8))
    for split in sorted(set(fs.splits), key=lambda s: list(MARKERS).index(s) if s in MARKERS else 9):
        for c, name in enumerate(fs.classes):
            m = (fs.splits == split) & (fs.labels == c)
            if not m.any():
                continue
            filled = split == "train"
            ax.scatter(xy[m, 0], xy[m, 1], s=30 if filled else 46, marker=MARKERS.get(split, "D"),
                       facecolors=colours(c % colours.N) if filled else "none", edgecolors=colours(c % colours.N),
                       linewidths=1.3, alpha=0.85, label=f"{name} ({split})")
    if thumbnails:
        step = max(1, len(fs.paths) // MAX_THUMBNAILS)
        for i in range(0, len(fs.paths), step):
            thumb = thumbnail(fs.paths[i], 32)
            if thumb is None:
                continue
            box = AnnotationBbox(OffsetImage(thumb, zoom=0.75), (xy[i, 0], xy[i, 1]), frameon=True, pad=0.1,
                                 bboxprops={"edgecolor": colours(int(fs.labels[i]) % colours.N), "linewidth": 1.5})
            ax.add_artist(box)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=2 if len(fs.classes) > 12 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    method = "t-SNE" if emb.method == "tsne" else "PCA"
    ax.set_title(f"{title}\n{method} of {len(xy)} images ({fs.meta['backbone']} features); filled: train, "
                 f"hollow: val; nearest neighbour has the same label for {emb.neighbour_agreement:.0%}", fontsize=10)
    save_figure(fig, target)


@writes_runs
def visualize_embedding(features: str | Path | FeatureSet, out: str | Path | None = None, pool: str = "avg",
                        method: str = "auto", perplexity: float = 30.0, thumbnails: bool = False,
                        seed: int = 0, force: bool = False) -> Embedding:
    """``tltool viz embedding``: ``embedding.png``, ``metrics.json`` (every point) and ``report.md`` in a run folder."""
    check_range("seed", seed)  # -1 was scikit-learn's InvalidParameterError
    check_run_dir(out, force, kind="viz")
    fs = features if isinstance(features, FeatureSet) else load_features(features)
    coords, used, params = embed(fs.features(pool), method, perplexity, seed)
    emb = Embedding(coords, used, {**params, "pool": pool, "seed": seed}, fs, nearest_agreement(coords, fs.labels))
    name = fs.meta["dataset"]["name"]
    run_dir = new_run_dir("viz", "embedding", name, fs.meta["backbone"], out=out, force=force)
    emb.run_dir, emb.png = run_dir, run_dir / "embedding.png"
    plot_embedding(emb, emb.png, thumbnails, title=name)
    write_picture_report(run_dir, f"{name}: embedding of the {fs.meta['backbone']} features", {
        "features": str(fs.directory), "method": used, "params": emb.params, "classes": fs.classes,
        "nearest_neighbour_agreement": emb.neighbour_agreement,
        "points": [{"path": p, "label": fs.classes[int(y)], "split": str(s), "x": float(x0), "y": float(y0)}
                   for p, y, s, (x0, y0) in zip(fs.paths, fs.labels, fs.splits, coords)],
        "png": "embedding.png",
    }, "embedding.png", [f"{used} of {len(coords)} images, features from {fs.directory}",
                         f"nearest neighbour has the same label for {emb.neighbour_agreement:.0%} of them"])
    return emb
