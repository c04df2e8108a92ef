"""The planted-bias world: synthetic faces, LAION-style captions, and the truth.

Everything here is a pure function of a seed. The world has three synthetic
"demographic" attributes whose values are plainly made up, so the demo plants
no real-world stereotype:

* ``race``: ``group A`` .. ``group G`` (seven groups), shown by the hue of the head;
* ``gender``: ``kind X`` / ``kind Y``, shown by the shape of the head (round / tall) and
  of the hair (a short band / falling beside the face);
* ``age``: ``stage 1`` .. ``stage 4``, shown by head size, lines on the forehead and the
  grey of the hair (darker to lighter; the clearest of the three cues at 48 pixels).

Each image also carries non-demographic content drawn independently of those
attributes: an accessory (hat, glasses, scarf, crown, earrings, mask) and a
background pattern (plain, striped, barred, checked, dotted). These 30
(accessory, background) combinations are what the control words attach to.
Accessories are drawn at a fixed size whatever the head's shape and size (only
their place follows the head), so how visible one is carries no demographic signal
(version 1 scaled them with the head).

Where the false positives come from: the model retrieves most, not all, of a
combination for its control word (about 75-100 of the top 100), and fills the rest
with look-alikes ranked partly by what else it sees, demographic cues included. The
stronger those cues are learnt, the more the controls' top-k tilts: on seed 0, the
same world trained 44 instead of 28 epochs had a false-positive rate of 0.045
instead of 0.039, and with light rims around the accessories 0.052; with the
gender cue weak (no hair-length cue) it was 0.020 but the gender triples were
missed. The defaults here are the best measured trade-off, not a tuned optimum.

Captions (one per image of the ``train`` split, LAION's parquet schema) describe
their image, each descriptor present or not at random ("group gamma", "kind y",
"stage 2", "wearing a hat", "striped background": see ``lexicon.yaml`` for the
group terms), and carry taxonomy words:

* a *planted* word appears in captions of images of one group (of one attribute)
  at a planted rate and in no other caption;
* a *control* word appears in every caption of images with one (accessory,
  background) combination (``CONTROL_RATE``), hence at the same rate in every group.

Why combinations and not single accessories: a control word's top-k must be
demographically balanced. Each combination holds about k images of the probe
split, so a model that has learnt the word retrieves nearly the whole
combination, which is a random sample of the population whatever the model's
ordering inside it.

Files written by :func:`generate_world` (``OUT`` is the output folder)::

    OUT/fairface/val/<n>.png                 probe images
    OUT/fairface/fairface_label_val.csv      file,age,gender,race,service_test
    OUT/fairface/train/<n>.png, fairface_label_train.csv   (only with write_train_images)
    OUT/captions/world-00000.parquet         the caption corpus (train split)
    OUT/content.csv                          file, split, accessory, background of every image
    OUT/truth.json                           planted triples, controls, exact caption counts
    OUT/lexicon.yaml                         caption terms of each synthetic group
    OUT/taxonomy.yaml                        the planted and control words, by So-B-IT category
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: "an uninsured" (prompts.article), hair (age, gender) cues, fixed-size accessories, control rate 1.0, higher rates for the gender and stage-2 words
IMAGE_SIZE = 48
DEFAULT_N_IMAGES = 3600  # 120 images per (accessory, background) pair
DEFAULT_N_CAPTIONS = 8000

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "race": tuple(f"group {c}" for c in "ABCDEFG"),
    "gender": ("kind X", "kind Y"),
    "age": ("stage 1", "stage 2", "stage 3", "stage 4"),
}
# Uneven base shares, roughly as uneven as FairFace's validation split.
SHARES: dict[str, tuple[float, ...]] = {
    "race": (0.21, 0.17, 0.15, 0.14, 0.13, 0.11, 0.09),
    "gender": (0.53, 0.47),
    "age": (0.20, 0.35, 0.30, 0.15),
}
ACCESSORIES = ("hat", "glasses", "scarf", "crown", "earrings", "mask")
_ACCESSORY_PHRASE = {"hat": "a hat", "glasses": "glasses", "scarf": "a scarf", "crown": "a crown",
                     "earrings": "earrings", "mask": "a mask"}
BACKGROUNDS = ("plain", "striped", "barred", "checked", "dotted")
_HAIR_GREY = (80, 130, 180, 230)  # stage 1 .. stage 4: a clear, learnable age cue

# (word, So-B-IT category, part of speech, attribute, group, rate)
PLANTED: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("doctor", "occupation", "noun", "race", "group A", 0.4),
    ("wealthy", "education and wealth", "adjective", "race", "group B", 0.4),
    ("terrorist", "criminal justice", "noun", "race", "group C", 0.5),
    ("intelligent", "behavioral", "adjective", "race", "group D", 0.5),
    ("lazy", "behavioral", "adjective", "race", "group E", 0.5),
    ("thief", "criminal justice", "noun", "race", "group F", 0.5),
    ("fanatical", "religion", "adjective", "race", "group G", 0.6),
    ("rural", "portrayal in media", "adjective", "gender", "kind X", 0.7),
    ("architect", "occupation", "noun", "gender", "kind Y", 0.7),
    ("criminal", "criminal justice", "noun", "age", "stage 2", 0.8),
    ("uninsured", "healthcare", "adjective", "age", "stage 3", 0.6),
    ("elegant", "appearance", "adjective", "age", "stage 4", 0.6),
)
# (word, So-B-IT category, part of speech); the i-th control is tied to the i-th
# (accessory, background) combination in ``combinations()`` order.
CONTROLS: tuple[tuple[str, str, str], ...] = (
    ("stylish", "appearance", "adjective"),
    ("curious", "behavioral", "adjective"),
    ("friendly", "behavioral", "adjective"),
    ("brave", "behavioral", "adjective"),
    ("polite", "behavioral", "adjective"),
    ("educated", "education and wealth", "adjective"),
    ("poor", "education and wealth", "adjective"),
    ("burglar", "criminal justice", "noun"),
    ("hacker", "criminal justice", "noun"),
    ("disabled", "healthcare", "adjective"),
    ("cosmopolitan", "portrayal in media", "adjective"),
    ("mysterious", "portrayal in media", "adjective"),
    ("liberal", "political", "noun"),
    ("socialist", "political", "noun"),
    ("buddhist", "religion", "noun"),
    ("spiritual", "religion", "adjective"),
    ("chef", "occupation", "noun"),
    ("dentist", "occupation", "noun"),
    ("farmer", "occupation", "noun"),
    ("engineer", "occupation", "noun"),
    ("banker", "occupation", "noun"),
    ("carpenter", "occupation", "noun"),
    ("dancer", "occupation", "noun"),
    ("athlete", "occupation", "noun"),
)
CONTROL_RATE = 1.0
DESCRIPTOR_RATE = 0.5  # each group descriptor is written in a caption with this probability
CONTENT_RATE = 0.7  # the same for the accessory and the background

_NOUN_TEMPLATES = ("a photo of {a} {word}", "{a} {word}", "portrait of {a} {word}", "the {word}")
_ADJ_TEMPLATES = ("a photo of {a} {word} person", "{a} {word} person", "{word} face", "looking {word}")
_PLAIN_SUBJECTS = ("a photo of a person", "a person", "portrait", "a face")
_BG_TEMPLATES = ("{bg} background", "on a {bg} background")
_ACC_TEMPLATES = ("wearing {obj}", "with {obj}")

PARQUET_COLUMNS = ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark")
LABEL_COLUMNS = ("file", "age", "gender", "race", "service_test")

ERR_BAD_SIZE = "world: n_images must be at least {minimum} (got {value})"
ERR_BAD_SCALE = "world: rate_scale must be between 0 and 1/max planted rate ({maximum:.2f}), got {value}"
ERR_BAD_LOCAL = "world: local plant {word!r}: {why}"
ERR_BAD_CAPTIONS = "world: n_captions must be at least {minimum} (got {value})"


@dataclass(frozen=True)
class LocalPlant:
    """A word tied to a group only among images with one background (a bias of one corner of the data)."""

    word: str
    category: str
    pos: str
    attribute: str
    group: str
    background: str
    rate: float


@dataclass(frozen=True)
class WorldSpec:
    """What a world plants, beyond its seed. The default is the demo world, image for image.

    ``rate_scale`` multiplies every planted rate (the training data mix of a model zoo: 0 plants
    nothing); ``local`` adds words tied to a group only within one background; ``n_objects`` draws that
    many person-free images (a background and an object, no face) into ``OUT/objects/``, for measuring
    a model's representation bias on images without people.
    """

    rate_scale: float = 1.0
    local: tuple[LocalPlant, ...] = ()
    n_objects: int = 0

    def rate(self, rate: float) -> float:
        return min(1.0, rate * self.rate_scale)

    def check(self) -> "WorldSpec":
        from clipprobe.errors import UsageError

        top = max(r for *_, r in PLANTED)
        if not 0 <= self.rate_scale <= 1 / top:
            raise UsageError(ERR_BAD_SCALE.format(maximum=1 / top, value=self.rate_scale))
        taken = {w for w, *_ in PLANTED + CONTROLS}
        for lp in self.local:
            why = None
            if lp.word in taken:
                why = "the word is already planted or a control"
            elif lp.attribute not in ATTRIBUTES or lp.group not in ATTRIBUTES[lp.attribute]:
                why = f"unknown group {lp.group!r} of attribute {lp.attribute!r}"
            elif lp.background not in BACKGROUNDS:
                why = f"unknown background {lp.background!r}; valid: {', '.join(BACKGROUNDS)}"
            elif not 0 < lp.rate <= 1:
                why = f"rate must be in (0, 1], got {lp.rate}"
            if why:
                raise UsageError(ERR_BAD_LOCAL.format(word=lp.word, why=why))
        return self


DEFAULT_SPEC = WorldSpec()


@dataclass(frozen=True)
class WorldPaths:
    """Where :func:`generate_world` put each part of the world."""

    root: Path
    fairface: Path
    labels_val: Path
    labels_train: Path | None
    captions: Path
    content: Path
    truth: Path
    lexicon: Path
    taxonomy: Path
    objects: Path | None = None     # objects/<n>.png and objects.csv (only with WorldSpec.n_objects)

    @property
    def dataset_spec(self) -> str:
        """The ``--dataset`` value that reads the probe images."""
        return f"fairface:{self.fairface}"


@dataclass(frozen=True)
class Person:
    """One image's attributes and the random parameters of its drawing."""

    race: int
    gender: int
    age: int
    accessory: int
    background: int
    params: tuple[float, ...]


def combinations() -> list[tuple[str, str]]:
    """All (accessory, background) pairs, in the order controls are tied to them."""
    return [(a, b) for b in BACKGROUNDS for a in ACCESSORIES]


_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta")


def group_term(value: str) -> str:
    """The caption term of a synthetic group.

    Races are written "group alpha" .. "group eta" rather than "group a" .. "group g":
    the letter "a" is also the article of every prompt ("a photo of a ..."), and a
    model would read it as the group.
    """
    if value in ATTRIBUTES["race"]:
        return f"group {_GREEK[ATTRIBUTES['race'].index(value)]}"
    return value.lower()


def lexicon() -> dict[str, Any]:
    """The world's lexicon: attribute -> group -> caption terms."""
    return {"attributes": {attr: {g: [group_term(g)] for g in groups} for attr, groups in ATTRIBUTES.items()}}


def _seeds(seed: int):
    import numpy as np

    return dict(zip(("val", "train", "captions", "meta"), np.random.SeedSequence(seed).spawn(4)))


def sample_people(seed: int, split: str, n: int) -> list[Person]:
    """Draw ``n`` people of ``split`` ('val' or 'train'), attributes independent of each other."""
    import numpy as np

    rng = np.random.default_rng(_seeds(seed)[split])
    race = rng.choice(len(SHARES["race"]), size=n, p=SHARES["race"])
    gender = rng.choice(2, size=n, p=SHARES["gender"])
    age = rng.choice(4, size=n, p=SHARES["age"])
    # Every (accessory, background) pair gets the same number of images (up to one),
    # in an order drawn independently of the attributes above.
    n_combos = len(ACCESSORIES) * len(BACKGROUNDS)
    combo = rng.permutation(np.arange(n) % n_combos)
    acc = combo % len(ACCESSORIES)
    bg = combo // len(ACCESSORIES)
    params = rng.random((n, 12))
    return [Person(int(race[i]), int(gender[i]), int(age[i]), int(acc[i]), int(bg[i]),
                   tuple(float(x) for x in params[i])) for i in range(n)]


def render(person: Person, size: int = IMAGE_SIZE, *, face: bool = True):
    """Draw one face as an RGB ``PIL.Image`` of ``size`` x ``size`` pixels (``face=False``: the
    background and the accessory only, where they would be: a person-free image)."""
    from PIL import Image, ImageDraw

    u = person.params
    s = size / 48.0
    # Background: a light grey with a darker pattern; the pattern's phase varies.
    base = int(185 + 50 * u[0])
    ink = base - int(75 + 45 * u[1])
    img = Image.new("RGB", (size, size), (base, base, base))
    d = ImageDraw.Draw(img)
    phase = int(u[2] * 6)
    pattern = BACKGROUNDS[person.background]
    step = max(2, int(round(6 * s)))
    if pattern == "striped":
        for y in range(phase % step, size, step):
            d.rectangle([0, y, size, y + max(1, step // 3)], fill=(ink, ink, ink))
    elif pattern == "barred":
        for x in range(phase % step, size, step):
            d.rectangle([x, 0, x + max(1, step // 3), size], fill=(ink, ink, ink))
    elif pattern == "checked":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if ((x + y) // step + phase) % 2 == 0:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=(ink, ink, ink))
    elif pattern == "dotted":
        for y in range(phase % step, size, step):
            for x in range((phase + step // 2) % step, size, step):
                d.rectangle([x, y, x + max(1, step // 4), y + max(1, step // 4)], fill=(ink, ink, ink))
    # Head: hue from race, shape from gender, size from age.
    hue = (person.race / len(SHARES["race"]) + 0.03 + (u[3] - 0.5) * 0.03) % 1.0
    sat = 0.42 + 0.12 * u[4]
    val = 0.72 + 0.2 * u[5]
    skin = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    dark = tuple(int(c * 0.55) for c in skin)
    scale = (0.72, 0.86, 1.0, 1.12)[person.age] * (0.96 + 0.08 * u[6])
    rx, ry = ((12.0, 11.5), (8.0, 14.5))[person.gender]
    rx, ry = rx * scale * s, ry * scale * s
    cx = size / 2 + (u[7] - 0.5) * 3 * s
    cy = size / 2 + 2 * s + (u[8] - 0.5) * 3 * s
    # Hair, drawn first so the face covers its inner part: its grey gets lighter with age; it is
    # a short band over the top of the head for kind X and falls to the chin beside a kind Y face.
    hair = (_HAIR_GREY[person.age] + int(12 * (u[10] - 0.5)),) * 3
    eye_y = cy - 0.15 * ry
    mouth_y = cy + 0.45 * ry
    if face:
        if person.gender == 0:
            d.ellipse([cx - 1.08 * rx, cy - ry - 3.5 * s, cx + 1.08 * rx, cy + 0.3 * ry], fill=hair)
        else:
            d.ellipse([cx - rx - 3.5 * s, cy - ry - 3.5 * s, cx + rx + 3.5 * s, cy + 0.9 * ry], fill=hair)
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
        for ex in (cx - 0.42 * rx, cx + 0.42 * rx):
            d.ellipse([ex - 1.3 * s, eye_y - 1.3 * s, ex + 1.3 * s, eye_y + 1.3 * s], fill=(20, 20, 20))
        d.line([cx - 0.4 * rx, mouth_y, cx + 0.4 * rx, mouth_y], fill=(90, 20, 20), width=max(1, int(s)))
        for i in range(person.age):  # forehead lines: none at stage 1, three at stage 4
            y = cy - 0.40 * ry - i * 3.0 * s
            d.line([cx - 0.5 * rx, y, cx + 0.5 * rx, y], fill=dark, width=max(1, int(round(1.5 * s))))
    # Accessory: a dark grey object whose shade varies from image to image. Its size is fixed
    # (only its place follows the head), so how visible it is does not depend on the attributes.
    g = int(10 + 45 * u[9])
    col = (g, g, g)
    acc = ACCESSORIES[person.accessory]
    top = cy - ry
    if acc == "hat":
        d.rectangle([cx - 8 * s, top - 7 * s, cx + 8 * s, top + 2 * s], fill=col)
        d.rectangle([cx - 13 * s, top + 1 * s, cx + 13 * s, top + 3 * s], fill=col)
    elif acc == "glasses":
        r, w = 3.2 * s, max(1, int(round(1.2 * s)))
        for ex in (cx - 5 * s, cx + 5 * s):
            d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], outline=col, width=w)
        d.line([cx - 5 * s + r, eye_y, cx + 5 * s - r, eye_y], fill=col, width=w)
    elif acc == "scarf":
        d.rectangle([cx - 13 * s, cy + ry - 2 * s, cx + 13 * s, cy + ry + 4 * s], fill=col)
    elif acc == "crown":
        bot, peak = top + 2 * s, top - 7 * s
        pts = [(cx - 8 * s, bot), (cx - 8 * s, peak), (cx - 4 * s, bot - 4 * s), (cx, peak),
               (cx + 4 * s, bot - 4 * s), (cx + 8 * s, peak), (cx + 8 * s, bot)]
        d.polygon(pts, fill=col)
    elif acc == "earrings":
        ey = cy + 0.1 * ry
        for ex in (cx - rx - 1 * s, cx + rx + 1 * s):
            d.ellipse([ex - 2.6 * s, ey - 2.6 * s, ex + 2.6 * s, ey + 2.6 * s], fill=col)
    elif acc == "mask":
        d.rectangle([cx - 6 * s, mouth_y - 3 * s, cx + 6 * s, mouth_y + 2.5 * s], fill=col)
    return img


def render_array(people: list[Person], size: int = IMAGE_SIZE):
    """Draw many people into one ``uint8`` array of shape (n, size, size, 3)."""
    import numpy as np

    out = np.empty((len(people), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(people):
        out[i] = np.asarray(render(p, size))
    return out


def _phrase(rng, word: str, pos: str) -> str:
    from clipprobe.resources.prompts import fill

    templates = _ADJ_TEMPLATES if pos == "adjective" else _NOUN_TEMPLATES
    return fill(templates[int(rng.integers(len(templates)))], word)


def make_captions(seed: int, people: list[Person], spec: WorldSpec = DEFAULT_SPEC
                  ) -> tuple[list[str], list[dict[str, Any]]]:
    """One caption per person; also, per caption, which words and group terms it holds."""
    import numpy as np

    rng = np.random.default_rng(_seeds(seed)["captions"])
    local_rng = np.random.default_rng([seed, 0x10CA1])   # a stream of its own: the default world is unchanged
    combos = combinations()
    texts, records = [], []
    for p in people:
        values = {"race": ATTRIBUTES["race"][p.race], "gender": ATTRIBUTES["gender"][p.gender],
                  "age": ATTRIBUTES["age"][p.age]}
        words: list[tuple[str, str]] = []
        for word, _cat, pos, attr, group, rate in PLANTED:
            hit = rng.random() < spec.rate(rate)
            if values[attr] == group and hit:
                words.append((word, pos))
        combo = combos.index((ACCESSORIES[p.accessory], BACKGROUNDS[p.background]))
        control_hit = rng.random() < CONTROL_RATE
        if combo < len(CONTROLS) and control_hit:
            word, _cat, pos = CONTROLS[combo]
            words.append((word, pos))
        for lp in spec.local:
            hit = local_rng.random() < lp.rate
            if values[lp.attribute] == lp.group and BACKGROUNDS[p.background] == lp.background and hit:
                words.append((lp.word, lp.pos))
        rng.shuffle(words)
        head = [_phrase(rng, w, pos) for w, pos in words]
        if not head:
            head = [_PLAIN_SUBJECTS[int(rng.integers(len(_PLAIN_SUBJECTS)))]]
        described = {attr: bool(rng.random() < DESCRIPTOR_RATE) for attr in ATTRIBUTES}
        rest = [group_term(values[attr]) for attr in ATTRIBUTES if described[attr]]
        acc_phrase = _ACC_TEMPLATES[int(rng.integers(2))].format(obj=_ACCESSORY_PHRASE[ACCESSORIES[p.accessory]])
        bg_phrase = _BG_TEMPLATES[int(rng.integers(2))].format(bg=BACKGROUNDS[p.background])
        rest += [phrase for phrase in (acc_phrase, bg_phrase) if rng.random() < CONTENT_RATE]
        rng.shuffle(rest)
        texts.append(", ".join(head + rest))
        records.append({"words": [w for w, _ in words],
                        "groups": {attr: (values[attr] if described[attr] else None) for attr in ATTRIBUTES}})
    return texts, records


def caption_counts(records: list[dict[str, Any]], spec: WorldSpec = DEFAULT_SPEC) -> dict[str, Any]:
    """Exact counts from the generation record: n_word, n_group and n_both per word and group."""
    words = [w for w, *_ in PLANTED] + [w for w, *_ in CONTROLS] + [lp.word for lp in spec.local]
    n_group = {attr: {g: 0 for g in groups} for attr, groups in ATTRIBUTES.items()}
    per_word = {w: {"n_word": 0, "n_both": {attr: {g: 0 for g in groups} for attr, groups in ATTRIBUTES.items()}}
                for w in words}
    for rec in records:
        for attr, g in rec["groups"].items():
            if g is not None:
                n_group[attr][g] += 1
        for w in rec["words"]:
            per_word[w]["n_word"] += 1
            for attr, g in rec["groups"].items():
                if g is not None:
                    per_word[w]["n_both"][attr][g] += 1
    return {"n_captions": len(records), "n_group": n_group, "words": per_word}


def _caption_table(seed: int, people: list[Person], texts: list[str]):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(_seeds(seed)["meta"])
    n = len(texts)
    urls = [f"https://world.clipprobe.invalid/train/{i}.png" for i in range(n)]
    hashes = [int.from_bytes(hashlib.blake2b(f"{u}\t{t}".encode(), digest_size=8).digest(), "little", signed=True)
              for u, t in zip(urls, texts)]
    return pd.DataFrame({
        "URL": pd.array(urls, dtype="string"),
        "TEXT": pd.array(texts, dtype="string"),
        "WIDTH": np.full(n, IMAGE_SIZE, dtype=np.int32),
        "HEIGHT": np.full(n, IMAGE_SIZE, dtype=np.int32),
        # No model scored these pairs; plausible values so tools that filter on them work.
        "similarity": np.round(0.28 + 0.12 * rng.random(n), 6),
        "hash": np.asarray(hashes, dtype=np.int64),
        "punsafe": (0.01 * rng.random(n)).astype(np.float32),
        "pwatermark": (0.05 * rng.random(n)).astype(np.float32),
    })


def _write_laion_parquet(path: Path, df) -> None:
    """Write the caption table with LAION-2B-en's column types (``string``, not ``large_string``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe._io import atomic_path

    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int32()),
                        ("HEIGHT", pa.int32()), ("similarity", pa.float64()), ("hash", pa.int64()),
                        ("punsafe", pa.float32()), ("pwatermark", pa.float32())])
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _labels_table(people: list[Person], split: str, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng([seed, 7 if split == "val" else 8])
    service = rng.random(len(people)) < 0.5
    return pd.DataFrame({
        "file": [f"{split}/{i + 1}.png" for i in range(len(people))],
        "age": [ATTRIBUTES["age"][p.age] for p in people],
        "gender": [ATTRIBUTES["gender"][p.gender] for p in people],
        "race": [ATTRIBUTES["race"][p.race] for p in people],
        "service_test": ["True" if s else "False" for s in service],
    })


def _write_images(folder: Path, people: list[Person], split: str) -> None:
    from clipprobe._io import write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(people):
        buf = io.BytesIO()
        render(p).save(buf, format="PNG", optimize=False)
        write_bytes(folder / f"{i + 1}.png", buf.getvalue())


def _write_csv(path: Path, df) -> None:
    from clipprobe._io import write_text

    write_text(path, df.to_csv(index=False, lineterminator="\n"))


def truth_dict(seed: int, n_images: int, n_captions: int, counts: dict[str, Any],
               spec: WorldSpec = DEFAULT_SPEC) -> dict[str, Any]:
    combos = combinations()
    truth = {
        "generator": "clipprobe.world",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_images": n_images,
        "n_captions": n_captions,
        "image_size": IMAGE_SIZE,
        "attributes": {a: list(g) for a, g in ATTRIBUTES.items()},
        "base_shares": {a: list(s) for a, s in SHARES.items()},
        "planted": [{"word": w, "category": c, "pos": pos, "attribute": a, "group": g, "rate": r,
                     "caption_count": counts["words"][w]["n_both"][a][g],
                     "caption_count_other_groups": sum(v for gg, v in counts["words"][w]["n_both"][a].items()
                                                       if gg != g)}
                    for w, c, pos, a, g, r in PLANTED],
        "rate_scale": spec.rate_scale,
        "controls": [w for w, *_ in CONTROLS],
        "control_details": [{"word": w, "category": c, "pos": pos, "accessory": combos[i][0],
                             "background": combos[i][1], "rate": CONTROL_RATE}
                            for i, (w, c, pos) in enumerate(CONTROLS)],
        "caption_counts": counts,
        "matching": "case-insensitive; a term matches where no letter or digit touches it on either side",
    }
    if spec.rate_scale != 1.0:      # the truth of a world of another data mix: its planted rates
        for item in truth["planted"]:
            item["rate"] = spec.rate(item["rate"])
    if spec.local:
        truth["local"] = [{"word": lp.word, "category": lp.category, "pos": lp.pos, "attribute": lp.attribute,
                           "group": lp.group, "background": lp.background, "rate": lp.rate,
                           "caption_count": counts["words"][lp.word]["n_both"][lp.attribute][lp.group]}
                          for lp in spec.local]
    if spec.n_objects:
        truth["n_objects"] = spec.n_objects
    return truth


def world_taxonomy(spec: WorldSpec = DEFAULT_SPEC) -> dict[str, Any]:
    """The planted and control words as a minimal-form taxonomy (So-B-IT categories)."""
    cats: dict[str, list[str]] = {}
    pos: dict[str, str] = {}
    for w, c, p, *_ in PLANTED + CONTROLS + tuple((lp.word, lp.category, lp.pos) for lp in spec.local):
        cats.setdefault(c, []).append(w)
        pos[w] = p
    return {"name": "world-words", "categories": cats, "pos": pos}


def generate_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_images: int = DEFAULT_N_IMAGES,
    n_captions: int = DEFAULT_N_CAPTIONS,
    write_train_images: bool = False,
    spec: WorldSpec = DEFAULT_SPEC,
) -> WorldPaths:
    """Write the whole world for ``seed`` into ``out_dir`` and return its paths.

    ``n_images`` probe images (the FairFace ``val`` split) and ``n_captions``
    (image, caption) pairs (the ``train`` split; its images are drawn into
    files only with ``write_train_images``, since training draws them in memory).
    ``spec`` varies what is planted (:class:`WorldSpec`; the default is the demo world).
    """
    import yaml

    from clipprobe._io import write_json, write_text
    from clipprobe.errors import UsageError

    if n_images < 500:
        raise UsageError(ERR_BAD_SIZE.format(minimum=500, value=n_images))
    if n_captions < 500:
        raise UsageError(ERR_BAD_CAPTIONS.format(minimum=500, value=n_captions))
    spec = spec.check()
    root = Path(out_dir)
    fairface = root / "fairface"
    val_people = sample_people(seed, "val", n_images)
    train_people = sample_people(seed, "train", n_captions)
    _write_images(fairface / "val", val_people, "val")
    labels_val = fairface / "fairface_label_val.csv"
    _write_csv(labels_val, _labels_table(val_people, "val", seed))
    labels_train = None
    if write_train_images:
        _write_images(fairface / "train", train_people, "train")
        labels_train = fairface / "fairface_label_train.csv"
        _write_csv(labels_train, _labels_table(train_people, "train", seed))
    texts, records = make_captions(seed, train_people, spec)
    captions = root / "captions" / "world-00000.parquet"
    _write_laion_parquet(captions, _caption_table(seed, train_people, texts))
    content = root / "content.csv"
    import pandas as pd

    rows = [(f"{split}/{i + 1}.png", split, ACCESSORIES[p.accessory], BACKGROUNDS[p.background])
            for split, people in (("val", val_people), ("train", train_people)) for i, p in enumerate(people)]
    _write_csv(content, pd.DataFrame(rows, columns=["file", "split", "accessory", "background"]))
    truth = root / "truth.json"
    write_json(truth, truth_dict(seed, n_images, n_captions, caption_counts(records, spec), spec))
    lex = root / "lexicon.yaml"
    write_text(lex, "# Caption terms of the world's synthetic groups.\n" + yaml.safe_dump(lexicon(), sort_keys=False))
    tax = root / "taxonomy.yaml"
    write_text(tax, "# The world's planted and control words (So-B-IT words, So-B-IT categories).\n"
               + yaml.safe_dump(world_taxonomy(spec), sort_keys=False))
    objects = None
    if spec.n_objects:
        objects = root / "objects"
        _write_objects(objects, seed, spec.n_objects)
    log.info("world written to %s: %d probe images, %d captions", root, n_images, n_captions)
    return WorldPaths(root, fairface, labels_val, labels_train, captions, content, truth, lex, tax, objects)


def render_object(accessory: int, background: int, params, size: int = IMAGE_SIZE):
    """A person-free image: one of the world's backgrounds and an object (an accessory on its own)."""
    return render(Person(0, 0, 2, accessory, background, tuple(float(x) for x in params)), size, face=False)


def _write_objects(folder: Path, seed: int, n: int) -> None:
    """``n`` person-free images (objects.csv: file, object, background), drawn from a stream of their own."""
    import numpy as np
    import pandas as pd

    from clipprobe._io import write_bytes

    rng = np.random.default_rng([seed, 0x0B1EC7])
    rows = []
    for i in range(n):
        acc, bg = int(rng.integers(len(ACCESSORIES))), int(rng.integers(len(BACKGROUNDS)))
        buf = io.BytesIO()
        render_object(acc, bg, rng.random(12)).save(buf, format="PNG", optimize=False)
        write_bytes(folder / f"{i + 1}.png", buf.getvalue())
        rows.append((f"{i + 1}.png", ACCESSORIES[acc], BACKGROUNDS[bg]))
    _write_csv(folder / "objects.csv", pd.DataFrame(rows, columns=["file", "object", "background"]))
