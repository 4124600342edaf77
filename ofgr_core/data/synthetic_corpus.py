"""A captioned pretraining corpus in the style of web alt-text, drawn by the synthetic world's generator.

Real CLIP learned car models because web captions name them ("2012 Tesla Model S in red"). This corpus
imitates that for the synthetic vehicle world, as pretraining data for the demo's CLIP stand-in:

- **classes**: ``num_coarse`` body types x ``fine_per_coarse`` make/model classes of world seed ``seed``. With
  the defaults (seed 0, 6 x 32 = 192 classes) they include the 48 classes of the demo world (seed 0, 6 x 8)
  by name, seen and unseen alike, as web data includes the classes of a benchmark; ``skip_fine=8`` leaves
  those out (an ablation). The class count is 8x the demo's 24 labelled (seen) classes.
- **images**: drawn by the same renderer with image indices from ``INDEX_OFFSET`` on, so no corpus image is an
  image of any world (a world's indices are below 100,000); a long tail of images per class (0.5x to 1.5x
  ``images_per_class``).
- **captions**: alt-text-like and uneven: most name the make/model in one of several forms (``Falcon Sedan
  S2``, ``Falcon S2 saloon``, lower case), some only the colour and body type, a few say nothing useful
  (``IMG_4821``) or name a wrong colour; colour, accessory (roof rack, spoiler, ...), facing direction and
  background appear with their own probabilities, in varying order.

Where the imitation stops: one renderer and one viewpoint (side views), ten colours, a closed vocabulary of a
few hundred words, no other objects, no typos, no other languages; every caption that names a class names
it correctly. Real web data is far larger, noisier and more varied, and its images are photographs.

Layout::

    OUT/images/<coarse>/<fine-slug>/NNNN.png
    OUT/manifest.csv   path, caption, fine, coarse, make, model, color, accessory, facing, domain
    OUT/corpus.json    version, options, class count, image count, manifest sha256 (the corpus hash)

API: ``generate_corpus(out_dir, **options) -> Path`` (reused when the folder holds the same corpus),
``corpus_hash(out_dir) -> str``, ``web_caption(cls, attrs, rng) -> str``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.data import synthetic

# Bump when images or captions change: a corpus of an older version is regenerated, not reused.
CORPUS_VERSION = 1
INDEX_OFFSET = 1_000_000
MANIFEST = "manifest.csv"
SPEC_FILE = "corpus.json"
IMAGES = "images"
COLUMNS = ("path", "caption", "fine", "coarse", "make", "model", "color", "accessory", "facing", "domain")

_BODY_WORDS: dict[str, tuple[str, ...]] = {
    "sedan": ("sedan", "sedan", "saloon"),
    "hatchback": ("hatchback", "hatchback", "hatch"),
    "suv": ("SUV", "SUV", "suv"),
    "pickup": ("pickup", "pickup truck", "pickup"),
    "van": ("van", "van", "minivan"),
    "bus": ("bus", "bus", "coach"),
    "coupe": ("coupe", "coupe"),
    "wagon": ("wagon", "estate"),
}
_BACKGROUND: dict[str, tuple[str, ...]] = {
    "sky": ("against the sky", "under a blue sky", "outdoors"),
    "road": ("on a road", "on the street", "parked on the road"),
    "studio": ("in a studio", "studio shot", "on a plain backdrop"),
    "texture": ("in front of a textured wall", "by a wall", "against a brick wall"),
}
_NOISE = ("IMG_{n}", "DSC{n}", "photo {n}", "great day out", "weekend trip", "just got back",
          "for sale, call now", "view from the window", "untitled")
_NAME_RATE = 0.8  # captions that name the make/model (the rest: colour and body type, or noise)
_NOISE_RATE = 0.05
_WRONG_COLOUR_RATE = 0.03


class CorpusOptions(BaseModel):
    """Options of :func:`generate_corpus` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    num_coarse: int = Field(6, ge=1, le=len(synthetic.COARSE_TYPES))
    fine_per_coarse: int = Field(32, ge=1, le=64)
    skip_fine: int = Field(0, ge=0, le=63)  # leave out the first k classes of every body type
    images_per_class: int = Field(16, ge=1, le=10_000)
    image_size: int = Field(64, ge=16, le=1024)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(k)) for k in key]))


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def web_caption(cls: dict[str, Any], attrs: dict[str, str], rng: np.random.Generator) -> str:
    """An alt-text-like caption of one image of ``cls`` (a ``synthetic.build_classes`` entry) with ``attrs``."""
    u = rng.random
    if u() < _NOISE_RATE:
        return str(rng.choice(_NOISE)).format(n=int(rng.integers(1000, 9999)))
    colour = attrs["color"]
    if u() < _WRONG_COLOUR_RATE:
        colour = str(rng.choice([c for c in synthetic.PALETTE if c != colour]))
    body = str(rng.choice(_BODY_WORDS[cls["coarse"]]))
    full, short = cls["fine"], f"{cls['make']} {cls['model']}"
    if u() < _NAME_RATE:
        form = int(rng.integers(7))
        text = [f"{colour} {full}", f"{full} in {colour}", f"a photo of a {colour} {full}",
                f"{short} {body}, {colour}", full, f"my {colour} {short} {body}",
                f"{_a(colour)} {colour} {full}"][form]
    else:
        text = f"{_a(colour)} {colour} {body}" if u() < 0.7 else f"a photo of {_a(colour)} {colour} {body}"
    acc = attrs["accessory"]
    if acc != "none" and u() < 0.7:
        text += str(rng.choice([f" with {_a(acc)} {acc}", f", {acc}", f" with {acc}"]))
    extras = []
    if u() < 0.3:
        extras.append(f"facing {attrs['facing']}")
    if u() < 0.4:
        extras.append(str(rng.choice(_BACKGROUND[attrs["domain"]])))
    rng.shuffle(extras)
    text = ", ".join([text, *extras])
    return text.lower() if u() < 0.2 else text


def _validate(options: dict[str, Any]) -> CorpusOptions:
    try:
        opts = CorpusOptions(**options)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                             for err in e.errors())
        valid = ", ".join(CorpusOptions.model_fields)
        raise ConfigError(f"invalid corpus option ({problems}); valid: {valid}") from None
    if opts.skip_fine >= opts.fine_per_coarse:
        raise ConfigError(f"corpus skip_fine={opts.skip_fine} leaves no class of fine_per_coarse="
                          f"{opts.fine_per_coarse}")
    return opts


def _counts(opts: CorpusOptions, cls: dict[str, Any]) -> int:
    """Images of one class: a long tail around ``images_per_class`` (0.5x to 1.5x), fixed by the seed."""
    r = _rng(opts.seed, cls["coarse_index"], cls["fine_index"], 0x7A11).uniform(0.5, 1.5)
    return max(1, int(round(opts.images_per_class * r)))


def _render_class(job: tuple[dict[str, Any], int, int, int, str]) -> list[dict[str, str]]:
    cls, count, seed, size, root = job
    rel_dir = f"{IMAGES}/{cls['coarse']}/{cls['slug']}"
    os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
    rows = []
    for i in range(count):
        index = INDEX_OFFSET + i
        img, attrs = synthetic.render(cls, index, seed, size)
        rel = f"{rel_dir}/{i:04d}.png"
        img.save(os.path.join(root, rel), format="PNG", compress_level=6)
        caption = web_caption(cls, attrs, _rng(seed, cls["coarse_index"], cls["fine_index"], index, 0xCA97))
        rows.append(dict(path=rel, caption=caption, fine=cls["fine"], coarse=cls["coarse"], make=cls["make"],
                         model=cls["model"], color=attrs["color"], accessory=attrs["accessory"],
                         facing=attrs["facing"], domain=attrs["domain"]))
    return rows


def _spec(opts: CorpusOptions) -> dict[str, Any]:
    return {"version": CORPUS_VERSION, "synth_version": synthetic.SYNTH_VERSION, "options": opts.model_dump()}


def corpus_hash(out_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of the corpus's manifest (paths and captions; images are fixed by the spec and version)."""
    return hashlib.sha256((Path(out_dir) / MANIFEST).read_bytes()).hexdigest()


def _is_complete(out: Path, opts: CorpusOptions) -> bool:
    try:
        spec = json.loads((out / SPEC_FILE).read_text())
        if {k: spec.get(k) for k in ("version", "synth_version", "options")} != _spec(opts):
            return False
        with open(out / MANIFEST, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError):
        return False
    return len(rows) == spec.get("images") and all((out / r["path"]).is_file() for r in rows)


def _prepare(out: Path) -> None:
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    ours = {IMAGES, MANIFEST, SPEC_FILE, MANIFEST + ".tmp", SPEC_FILE + ".tmp"}
    foreign = [e.name for e in out.iterdir() if e.name not in ours and not e.name.startswith(".")]
    if foreign:
        raise DataError(f"{out} is not empty and is not a captioned corpus (found {', '.join(sorted(foreign)[:3])}); "
                        "choose a new or empty folder")
    for name in (MANIFEST, MANIFEST + ".tmp", SPEC_FILE, SPEC_FILE + ".tmp"):
        (out / name).unlink(missing_ok=True)  # the manifest first: a half-rewritten folder never looks complete
    shutil.rmtree(out / IMAGES, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def generate_corpus(
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Path:
    """Write the captioned corpus to ``out_dir`` (see the module docstring), or reuse the one already there.

    Args:
        out_dir: target folder; a previous corpus in it is replaced, a folder holding anything else refused.
        workers: drawing processes (default: 2 for 600+ images, else 1); the output does not depend on it.
        progress: called as ``progress(done, total)`` while images are written.
        **options: ``CorpusOptions`` (seed, num_coarse, fine_per_coarse, skip_fine, images_per_class,
            image_size).

    Raises:
        ConfigError: a bad option. DataError: ``out_dir`` holds something else.
    """
    opts = _validate(options)
    out = Path(out_dir)
    classes = [c for c in synthetic.build_classes(opts.seed, opts.num_coarse, opts.fine_per_coarse)
               if c["fine_index"] >= opts.skip_fine]
    jobs = [(c, _counts(opts, c), opts.seed, opts.image_size, str(out)) for c in classes]
    total = sum(j[1] for j in jobs)
    if _is_complete(out, opts):
        if progress is not None:
            progress(total, total)
        return out
    _prepare(out)
    if workers is None:
        workers = 1 if total < 600 else min(2, os.cpu_count() or 1)
    results: list[list[dict[str, str]]] = []
    done = 0
    if progress is not None:
        progress(0, total)
    if workers <= 1:
        for job in jobs:
            results.append(_render_class(job))
            done += job[1]
            if progress is not None:
                progress(done, total)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rows in pool.map(_render_class, jobs):  # in job order: the manifest never depends on scheduling
                results.append(rows)
                done += len(rows)
                if progress is not None:
                    progress(done, total)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for rows in results for r in rows)
    text = buf.getvalue()
    spec = {**_spec(opts), "classes": len(classes), "images": total,
            "manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}
    _write_atomic(out / SPEC_FILE, json.dumps(spec, indent=1) + "\n")
    _write_atomic(out / MANIFEST, text)
    return out


__all__ = ["COLUMNS", "CORPUS_VERSION", "INDEX_OFFSET", "CorpusOptions", "corpus_hash", "generate_corpus",
           "web_caption"]
