"""A synthetic media library for the search benchmark: metadata from vocabularies, vectors from a real sample.

Titles are compositions of small vocabularies, one template per kind:
  product     "{colour} {material} {product}"             e.g. "navy blue suede ankle boot"   (12,000 combinations)
  background  "{mood} {scene} {time of day}"               e.g. "moody harbour at dusk"        (3,840)
  reference   "{style} {format} layout for {product}"      e.g. "retro banner ad layout for tote bag" (3,840)
Query texts use other templates over the same vocabularies ("red handbag in leather", "beach at sunset,
calm mood", "minimalist billboard for a backpack"), so no query is a stored title.

Vectors (the benchmark's docstring says how and why): a sample of distinct titles is embedded with the
real MiniLM; every other asset gets a point between a sample title's real vector and one of its real
neighbours, plus Gaussian noise shaped like the real embeddings' spread (`Noise`, `synthesize`),
standing in for the embedding of a near-duplicate title (its own title: the sample title with one slot
swapped). Everything is drawn from one seeded numpy Generator, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PRODUCTS = (
    "running shoe",
    "leather handbag",
    "backpack",
    "wristwatch",
    "sunglasses",
    "hoodie",
    "denim jacket",
    "wool sweater",
    "sneaker",
    "ankle boot",
    "baseball cap",
    "water bottle",
    "coffee mug",
    "desk lamp",
    "ceramic vase",
    "throw pillow",
    "yoga mat",
    "bluetooth speaker",
    "headphones",
    "phone case",
    "laptop sleeve",
    "perfume bottle",
    "lipstick",
    "face cream jar",
    "wallet",
    "belt",
    "scarf",
    "beanie",
    "t-shirt",
    "summer dress",
    "pleated skirt",
    "trench coat",
    "rain jacket",
    "hiking boot",
    "tote bag",
    "duffel bag",
    "travel mug",
    "kitchen knife",
    "cutting board",
    "scented candle",
)
COLOURS = (
    "red",
    "crimson",
    "navy blue",
    "sky blue",
    "forest green",
    "olive",
    "black",
    "white",
    "ivory",
    "beige",
    "tan",
    "brown",
    "charcoal grey",
    "silver",
    "gold",
    "pink",
    "coral",
    "mustard yellow",
    "lavender",
    "orange",
)
MATERIALS = (
    "leather",
    "suede",
    "canvas",
    "cotton",
    "linen",
    "wool",
    "denim",
    "nylon",
    "recycled plastic",
    "stainless steel",
    "ceramic",
    "glass",
    "bamboo",
    "velvet",
    "knit",
)
SCENES = (
    "beach",
    "city street",
    "mountain trail",
    "forest clearing",
    "desert road",
    "rooftop terrace",
    "cozy living room",
    "modern kitchen",
    "marble countertop",
    "wooden table",
    "concrete wall",
    "neon-lit alley",
    "snowy park",
    "lakeside dock",
    "flower field",
    "cafe interior",
    "gym floor",
    "office desk",
    "studio backdrop",
    "tropical jungle",
    "vineyard",
    "harbour",
    "subway platform",
    "library",
    "bathroom vanity",
    "garden patio",
    "poolside",
    "ski slope",
    "farmers market",
    "bookshop",
    "old stone bridge",
    "skatepark",
    "art gallery",
    "train station",
    "campsite",
    "sand dunes",
    "waterfall",
    "rice terraces",
    "loft apartment",
    "greenhouse",
)
TIMES = (
    "at sunrise",
    "in the morning",
    "at noon",
    "in the afternoon",
    "at golden hour",
    "at sunset",
    "at dusk",
    "at night",
)
MOODS = (
    "calm",
    "vibrant",
    "moody",
    "minimalist",
    "warm",
    "cool-toned",
    "dramatic",
    "airy",
    "cinematic",
    "playful",
    "rustic",
    "luxurious",
)
STYLES = (
    "bold typographic",
    "minimalist",
    "retro",
    "flat-lay",
    "lifestyle",
    "editorial",
    "pastel",
    "high-contrast",
    "hand-drawn",
    "collage",
    "monochrome",
    "split-screen",
)
FORMATS = (
    "instagram story",
    "banner ad",
    "carousel post",
    "email header",
    "billboard",
    "product page hero",
    "social square post",
    "print poster",
)

KINDS = ("product", "background", "reference")
KIND_SHARES = (0.3, 0.5, 0.2)
# The slots of each kind's title, in template order.
SLOTS = {
    "product": (COLOURS, MATERIALS, PRODUCTS),
    "background": (MOODS, SCENES, TIMES),
    "reference": (STYLES, FORMATS, PRODUCTS),
}


def title(kind: str, parts: Sequence[int]) -> str:
    a, b, c = (vocab[i] for vocab, i in zip(SLOTS[kind], parts, strict=True))
    return f"{a} {b} layout for {c}" if kind == "reference" else f"{a} {b} {c}"


def draw_parts(rng: np.random.Generator, kind: str) -> tuple[int, int, int]:
    a, b, c = (int(rng.integers(len(vocab))) for vocab in SLOTS[kind])
    return a, b, c


def sample_titles(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], list[tuple[int, int, int]]]:
    """n distinct titles split by KIND_SHARES: (kinds, titles, slot indices)."""
    kinds, titles, parts = [], [], []
    for kind, share in zip(KINDS, KIND_SHARES, strict=True):
        want = round(n * share) if kind != KINDS[-1] else n - len(titles)
        seen: set[tuple[int, int, int]] = set()
        while len(seen) < want:
            p = draw_parts(rng, kind)
            if p not in seen:
                seen.add(p)
                kinds.append(kind)
                titles.append(title(kind, p))
                parts.append(p)
    return kinds, titles, parts


def variant(rng: np.random.Generator, kind: str, parts: Sequence[int]) -> str:
    """The title with one slot swapped for another word: a near-duplicate text."""
    slot = int(rng.integers(3))
    vocab = SLOTS[kind][slot]
    new = list(parts)
    new[slot] = (parts[slot] + 1 + int(rng.integers(len(vocab) - 1))) % len(vocab)
    return title(kind, new)


def query_texts(rng: np.random.Generator, n: int, stored: set[str]) -> tuple[list[str], list[str]]:
    """n distinct queries over the same vocabularies with other templates, none equal to a stored title."""
    kinds, texts = [], []
    while len(texts) < n:
        kind = KINDS[int(rng.choice(3, p=KIND_SHARES))]
        a, b, c = (vocab[i] for vocab, i in zip(SLOTS[kind], draw_parts(rng, kind), strict=True))
        form = int(rng.integers(2))
        if kind == "product":
            text = f"{a} {c} in {b}" if form else f"{b} {c}, {a}"
        elif kind == "background":
            text = f"{b} {c}, {a} mood" if form else f"{b} {c}"
        else:
            text = f"{a} {b} for a {c}" if form else f"{c} {b}, {a} style"
        if text not in stored and text not in texts:
            kinds.append(kind)
            texts.append(text)
    return kinds, texts


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Noise:
    """Gaussian noise shaped like the real embeddings' own spread, scaled to a target cosine."""

    basis: np.ndarray  # (dim, dim): rows are principal directions scaled by their standard deviation
    scale: float

    @classmethod
    def fit(cls, real: np.ndarray, cosine: float) -> Noise:
        """cos(normalize(s + n), s) ≈ cosine for unit s: E|n|² = 1/cosine² - 1 (n is nearly orthogonal to s)."""
        cov = np.cov(real, rowvar=False)
        values, vectors = np.linalg.eigh(cov)
        basis = (vectors * np.sqrt(np.clip(values, 0, None))).T
        target = 1.0 / cosine**2 - 1.0
        return cls(basis=basis, scale=float(np.sqrt(target / max(float(values.sum()), 1e-12))))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.standard_normal((n, self.basis.shape[0])) @ self.basis * self.scale).astype(np.float32)


def synthesize(
    rng: np.random.Generator, base: np.ndarray, sources: np.ndarray, noise: Noise, chunk: int = 20_000
) -> np.ndarray:
    """normalize(base[source] + noise) for each source index."""
    out = np.empty((len(sources), base.shape[1]), dtype=np.float32)
    for start in range(0, len(sources), chunk):
        idx = sources[start : start + chunk]
        out[start : start + len(idx)] = normalize(base[idx] + noise.draw(rng, len(idx)))
    return out


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by cosine (vectors are unit length), best first: (len(queries), k) indices."""
    sims = queries @ vectors.T
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def nn_cosine(vectors: np.ndarray, queries: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Top-1 cosine of each query against vectors (queries are vectors[:len(queries)] when exclude_self)."""
    sims = queries @ vectors.T
    if exclude_self:
        sims[np.arange(len(queries)), np.arange(len(queries))] = -2.0
    return sims.max(axis=1)
