"""Built-in offline data set: deterministic synthetic scenes of coloured shapes with COCO-format captions."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from captioner.io import write_json

SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5
SHAPES = ("circle", "square", "triangle", "diamond")
PALETTE = (
    ("red", (220, 30, 30)),
    ("green", (30, 160, 50)),
    ("blue", (30, 70, 220)),
    ("yellow", (240, 200, 0)),
    ("purple", (140, 50, 190)),
    ("orange", (250, 130, 0)),
)
COLORS = tuple(name for name, _ in PALETTE)
SIZES = ("small", "large")
_SYNONYMS = (("small", "little"), ("large", "big"))
_RADIUS = (("small", (0.085, 0.095)), ("large", (0.135, 0.145)))  # half-extent as a fraction of the image side
_POLYGONS = (  # unit outlines; a circle is drawn as an ellipse
    ("square", ((-1, -1), (1, -1), (1, 1), (-1, 1))),
    ("triangle", ((0, -1), (1, 1), (-1, 1))),
    ("diamond", ((0, -1), (1, 0), (0, 1), (-1, 0))),
)
_GRID = (0.22, 0.5, 0.78)  # cell centres of a lone object, as fractions of the side
_JITTER, _GAP = 0.03, 0.03
_BACKGROUND = (245, 245, 245)
_MARGIN = 0.03  # keeps shapes clear of the edges that a training random crop may cut
_SUPERSAMPLE = 2
_PAIR = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b")

# Keys: S<i> sized noun phrase, Z<i> the same with size synonyms, N<i> without size, P<i> bare "colour shape";
# objects are numbered left to right (or top to bottom). Multi-object sets are (column, row) and hold three
# mirror pairs (swap left/right and reverse the objects); describe keeps 5 so that a flipped scene's captions
# are exactly the original ones with left and right swapped.
_SINGLE = (
    "{S0} {pa}",
    "there is {Z0} {pb}",
    "{pa} there is {S0}",
    "a single {P0} {pb}",
    "the image shows {Z0} {pa}",
)
_TWO = (
    (
        "{S0} above {S1}",
        "{S1} below {S0}",
        "{Z0} at the top and {Z1} at the bottom",
        "{Z1} at the bottom and {Z0} at the top",
        "the {P1} is under the {P0}",
        "the {P0} is over the {P1}",
    ),
    (
        "{S0} to the left of {S1}",
        "{S1} to the right of {S0}",
        "{Z0} on the left and {Z1} on the right",
        "{Z1} on the right and {Z0} on the left",
        "the {P1} is right of the {P0}",
        "the {P0} is left of the {P1}",
    ),
)
_THREE = (
    (
        "{N0} {N1} and {N2} from top to bottom",
        "{N2} {N1} and {N0} from bottom to top",
        "{S0} above {S1} above {S2}",
        "{S2} below {S1} below {S0}",
        "the {P1} is between the {P0} and the {P2}",
        "the {P1} is between the {P2} and the {P0}",
    ),
    (
        "{N0} {N1} and {N2} from left to right",
        "{N2} {N1} and {N0} from right to left",
        "{S0} left of {S1} left of {S2}",
        "{S2} right of {S1} right of {S0}",
        "the {P1} is between the {P0} and the {P2}",
        "the {P1} is between the {P2} and the {P0}",
    ),
)


def names_all_objects(caption: str, objects: list[dict]) -> bool:
    """True when the caption names every object's colour and shape (e.g. 'red circle')
    and no other colour+shape pair."""
    return set(_PAIR.findall(caption.lower())) == {(o["color"], o["shape"]) for o in objects}


def position_right(caption: str, objects: list[dict], size: int) -> bool | None:
    """For a lone object: whether the position the caption names (top/bottom/left/right/centre) is the right one;
    None when the caption names no position or the scene has several objects."""
    if len(objects) != 1:
        return None
    words = set(caption.lower().split())
    named = words & {"top", "bottom", "left", "right"} | ({"centre"} if words & {"centre", "middle"} else set())
    if not named:
        return None
    where = _position(objects[0]["x"] / size, objects[0]["y"] / size)["pa"].split()
    expected = set(where) & {"top", "bottom", "left", "right", "centre"}
    return named == expected


def describe(objects: list[dict], size: int) -> list[str]:
    """The five captions of a scene, derived from its objects' colours, shapes, sizes and positions."""
    if len(objects) == 1:
        o = objects[0]
        return [t.format(**_phrases([o]), **_position(o["x"] / size, o["y"] / size)) for t in _SINGLE]
    horizontal = bool(np.ptp([o["x"] for o in objects]) > np.ptp([o["y"] for o in objects]))
    ordered = sorted(objects, key=lambda o: o["x"] if horizontal else o["y"])
    templates = (_TWO if len(objects) == 2 else _THREE)[horizontal]
    # of the last mirror pair keep the one chosen by the end objects' identities: mirroring swaps the ends
    rank = [(COLORS.index(o["color"]), SHAPES.index(o["shape"])) for o in (ordered[0], ordered[-1])]
    chosen = (*templates[:4], templates[5 if rank[0] > rank[1] else 4])
    return [t.format(**_phrases(ordered)) for t in chosen]


def generate(out: str | Path, n_train: int = 2000, n_val: int = 250, n_test: int = 250,
             size: int = 128, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Write the data set; returns {split: annotation_path}."""
    counts = dict(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"n_{split} must be >= 0 (use 0 to leave the split empty), got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels so the shapes stay recognisable (e.g. 128), got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out, paths, next_id = Path(out), {}, 1
    with tqdm(total=sum(counts.values()), desc="synthetic scenes", unit="img", disable=not progress) as bar:
        for index, (split, n) in enumerate(counts.items()):
            rng = np.random.default_rng([seed, index])  # per split: val/test ignore n_train
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for image_id in range(next_id, next_id + n):
                objects, image = _scene(rng, size)
                name = f"{image_id:012d}.png"
                image.save(folder / name, format="PNG", compress_level=6)
                images.append({"id": image_id, "file_name": name, "width": size, "height": size,
                               "objects": objects})
                annotations += [{"id": (image_id - 1) * CAPTIONS_PER_IMAGE + k + 1, "image_id": image_id,
                                 "caption": caption} for k, caption in enumerate(describe(objects, size))]
                bar.update()
            next_id += n
            info = {"description": "captioner synthetic shapes", "version": "1", "split": split,
                    "seed": seed, "size": size}
            paths[split] = write_json(out / "annotations" / f"captions_{split}.json",
                                      {"info": info, "licenses": [], "images": images,
                                       "annotations": annotations}, indent=None)
    return paths


def _scene(rng: np.random.Generator, size: int) -> tuple[list[dict], Image.Image]:
    """Sample 1-3 distinct, non-overlapping objects and render them on a plain light background."""
    k = int(rng.integers(1, 4))
    kinds = rng.choice(len(COLORS) * len(SHAPES), size=k, replace=False)
    sizes = [SIZES[i] for i in rng.integers(0, len(SIZES), size=k)]
    radii = [rng.uniform(*dict(_RADIUS)[s]) for s in sizes]
    if k == 1:
        centres = [tuple(_GRID[i] + rng.uniform(-_JITTER, _JITTER) for i in rng.integers(0, 3, size=2))]
    else:  # a row or a column: well separated along it, nearly aligned across it
        along = _spread(rng, radii)
        base = rng.uniform(max(radii) + _MARGIN, 1 - max(radii) - _MARGIN)
        across = [np.clip(base + rng.uniform(-_JITTER, _JITTER), r + _MARGIN, 1 - r - _MARGIN) for r in radii]
        row = rng.random() < 0.5
        centres = [(a, c) if row else (c, a) for a, c in zip(along, across, strict=True)]
    objects = [{"shape": SHAPES[int(i) % len(SHAPES)], "color": COLORS[int(i) // len(SHAPES)], "size": s,
                "x": round(float(x) * size), "y": round(float(y) * size)}
               for i, s, (x, y) in zip(kinds, sizes, centres, strict=True)]
    return objects, _render(objects, [r * size for r in radii], size, _BACKGROUND)


def _spread(rng: np.random.Generator, radii: list[float]) -> list[float]:
    """Centres along one axis for objects of these radii, in order, with at least _GAP between them."""
    free = 1 - 2 * _MARGIN - 2 * sum(radii) - _GAP * (len(radii) - 1)
    slack = rng.random(len(radii) + 1)
    slack *= free / slack.sum()
    centres, pos = [], _MARGIN
    for r, s in zip(radii, slack[:-1], strict=True):
        centres.append(pos + s + r)
        pos = centres[-1] + r + _GAP
    return centres


def _render(objects: list[dict], radii: list[float], size: int, tint: tuple[int, ...]) -> Image.Image:
    """Draw the objects (radii in pixels) supersampled, then downsample for smooth edges."""
    f = _SUPERSAMPLE
    image = Image.new("RGB", (size * f, size * f), tint)
    draw = ImageDraw.Draw(image)
    width = max(1, size * f // 64)
    for o, r in zip(objects, radii, strict=True):
        x, y, r = o["x"] * f, o["y"] * f, r * f
        fill = dict(PALETTE)[o["color"]]
        outline = tuple(c * 6 // 10 for c in fill)
        polygon = dict(_POLYGONS).get(o["shape"])
        if polygon is None:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=width)
        else:
            points = [(x + u * r, y + v * r) for u, v in polygon]
            draw.polygon(points, fill=fill, outline=outline, width=width)
    return image.resize((size, size), Image.Resampling.BOX)


def _phrases(objects: list[dict]) -> dict[str, str]:
    """Template fields S<i>, Z<i>, N<i>, P<i> for the objects in order."""
    fields = {}
    for i, o in enumerate(objects):
        bare = f"{o['color']} {o['shape']}"
        fields |= {f"S{i}": _a(f"{o['size']} {bare}"), f"Z{i}": _a(f"{dict(_SYNONYMS)[o['size']]} {bare}"),
                   f"N{i}": _a(bare), f"P{i}": bare}
    return fields


def _position(x: float, y: float) -> dict[str, str]:
    """Two wordings (pa, pb) of where a lone object lies, from its centre as fractions of the side."""
    v = ("top", "", "bottom")[min(int(y * 3), 2)]
    h = ("left", "", "right")[min(int(x * 3), 2)]
    if v and h:
        return {"pa": f"in the {v} {h} corner", "pb": f"at the {v} {h} of the image"}
    if h:
        return {"pa": f"on the {h}", "pb": f"on the {h} side of the image"}
    if v:
        return {"pa": f"at the {v}", "pb": f"near the {v} of the image"}
    return {"pa": "in the centre", "pb": "in the middle of the image"}


def _a(phrase: str) -> str:
    """Prefix the indefinite article."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"
