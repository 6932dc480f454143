"""The params.yaml schema: every knob, one section per pipeline step.

``load_params`` validates the file and turns each mistake into one line that
names the key, what was expected and what was found; an unknown key names the
closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from negset.errors import NegsetError

STRATA_AXES = ("lighting", "background", "occlusion")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Positives(_Section):
    """Where the positives are and how they are labelled."""

    format: Literal["coco", "yolo", "list"] = Field(
        description="coco: a COCO instances JSON; yolo: a folder of YOLO .txt labels; "
        "list: a text or CSV file of image paths"
    )
    path: str = Field(description="the COCO JSON, the YOLO label folder, or the list file")
    images: str | None = Field(None, description="image folder for coco/yolo labels")
    classes: str | None = Field(None, description="yolo: class names file (one per line)")

    @model_validator(mode="after")
    def _needs_images(self) -> "Positives":
        if self.format in ("coco", "yolo") and not self.images:
            raise ValueError(f"format '{self.format}' needs 'images', the folder the labels refer to")
        if self.format == "yolo" and not self.classes:
            raise ValueError("format 'yolo' needs 'classes', the class names file")
        return self


class LocalSource(_Section):
    type: Literal["local"] = "local"
    path: str
    recursive: bool = True


class Ingest(_Section):
    target: list[str] = Field(min_length=1, description="class name(s) the negatives must not contain")
    positives: Positives
    sources: list[LocalSource] = Field(
        default_factory=list, description="candidate sources; empty = the folders the positives live in"
    )
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger images are refused before decoding")

    @field_validator("target", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Embed(_Section):
    model: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0 (offline default), timm:NAME or torchvision:NAME",
    )
    weights: str | None = Field(None, description="local weights file for timm/torchvision models")
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1, le=4096)
    threads: int = Field(0, ge=0, description="torch threads; 0 = all cores")


class Lighting(_Section):
    dark_below: float = Field(50.0, ge=0, le=255, description="median luminance under this: dark")
    dim_below: float = Field(95.0, ge=0, le=255, description="median luminance under this: dim")
    bright_above: float = Field(175.0, ge=0, le=255, description="median luminance over this: bright")
    high_contrast_std: float = Field(75.0, ge=0, le=255, description="luminance std at or over this: high-contrast")

    @model_validator(mode="after")
    def _ordered(self) -> "Lighting":
        if not self.dark_below <= self.dim_below <= self.bright_above:
            raise ValueError("expected dark_below <= dim_below <= bright_above")
        return self


class Background(_Section):
    clusters: int = Field(0, ge=0, le=256, description="number of background clusters; 0 = sqrt(n/2), 2..12")
    seed: int = 0


class Occlusion(_Section):
    edge_margin: float = Field(0.01, ge=0, lt=0.5, description="a box this close to the frame edge is cut")
    overlap: float = Field(0.2, gt=0, le=1, description="a box this much covered by another is occluded")
    heavy_share: float = Field(0.5, gt=0, le=1, description="share of occluded objects that makes 'heavy'")


class Tag(_Section):
    lighting: Lighting = Lighting()
    background: Background = Background()
    occlusion: Occlusion = Occlusion()


class Leaks(_Section):
    near_duplicate: float = Field(
        0.2, ge=0, le=2,
        description="cosine distance under which a candidate is a near-duplicate of a positive "
        "(or of another candidate: the group keeps one image)",
    )
    hash_bits: int = Field(
        5, ge=0, le=64,
        description="a candidate whose difference hash is within this many bits of a positive's is a "
        "near-duplicate too (catches strongly resized copies); 0 = off",
    )
    pool_dedup_max: int = Field(
        20_000, ge=0,
        description="pools up to this many candidates get full near-duplicate groups; larger pools "
        "check each pick against the picks before it",
    )


class Quarantine(_Section):
    enabled: bool = True
    positive_percentile: float = Field(
        50.0, ge=0, le=100,
        description="a candidate whose similarity to the positives reaches this percentile of the "
        "positives' own (leave-one-out) similarity is a suspected positive",
    )
    min_similarity: float = Field(0.0, ge=-1, le=1, description="and is at least this similar (mean top-k cosine)")
    nearest_labelled: bool = Field(
        True, description="also suspect an unlabelled candidate whose nearest labelled image is a positive"
    )
    reference_max: int = Field(
        2000, ge=0, description="labelled negatives compared for nearest_labelled (a seeded sample beyond this)"
    )


class Bands(_Section):
    by: Literal["percentile", "similarity"] = Field(
        "percentile", description="percentile: band edges are percentiles of the eligible candidates' "
        "similarity; similarity: band edges are mean top-k cosine similarities"
    )
    hard: float = Field(70.0, description="at or above: hard")
    medium: float = Field(35.0, description="at or above (and under hard): medium; under: context")
    mix: dict[Literal["hard", "medium", "context"], float] = Field(
        default_factory=lambda: {"hard": 0.5, "medium": 0.3, "context": 0.2},
        description="share of each band in every stratum's quota",
    )

    @model_validator(mode="after")
    def _valid(self) -> "Bands":
        if self.medium > self.hard:
            raise ValueError("expected medium <= hard")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("mix shares must be >= 0 and not all 0")
        return self


class Context(_Section):
    irrelevant_below_percentile: float = Field(
        10.0, ge=0, le=100,
        description="candidates under this percentile of similarity to the positives are irrelevant; 0 = keep all",
    )
    require_positive_background: bool = Field(
        True, description="candidates in a background cluster no positive has are irrelevant"
    )


class Quality(_Section):
    """Thresholds on the quality scores (negset.quality); under = rejected; null = off."""

    dark: float | None = Field(0.22, ge=0, le=1)
    light: float | None = Field(0.05, ge=0, le=1)
    low_information: float | None = Field(0.3, ge=0, le=1)
    near_uniform: float | None = Field(0.05, ge=0, le=1)
    blurry: float | None = Field(0.1, ge=0, le=1)
    odd_aspect_ratio: float | None = Field(0.4, ge=0, le=1)
    tiny: float | None = Field(0.25, ge=0, le=1)


class Select(_Section):
    count: int | None = Field(None, ge=1, description="number of negatives to choose")
    ratio: float | None = Field(None, gt=0, description="negatives per positive, used when count is not set")
    seed: int = 0
    quota: Literal["match", "uniform"] = Field("match", description="match: the positives' strata distribution; uniform: even over strata")
    strata: list[Literal["lighting", "background", "occlusion"]] = Field(
        default_factory=lambda: list(STRATA_AXES), min_length=1
    )
    min_per_stratum: int = Field(0, ge=0, description="each stratum with positives gets at least this many (if it has them)")
    top_k: int = Field(5, ge=1, description="similarity to the positives = mean of the top-k cosine similarities")
    diversity: Literal["kcenter", "random"] = Field("kcenter", description="picks inside a stratum: k-center greedy or seeded random")
    leaks: Leaks = Leaks()
    quarantine: Quarantine = Quarantine()
    bands: Bands = Bands()
    context: Context = Context()
    quality: Quality = Quality()

    @model_validator(mode="after")
    def _size(self) -> "Select":
        if self.count is None and self.ratio is None:
            raise ValueError("set 'count' (number of negatives) or 'ratio' (negatives per positive)")
        return self

    def size_for(self, n_positives: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, round(self.ratio * n_positives))


class Export(_Section):
    copy_images: bool = Field(True, description="copy the chosen images into data/negatives/images")


class Params(_Section):
    ingest: Ingest
    embed: Embed = Embed()
    tag: Tag = Tag()
    select: Select
    export: Export = Export()


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (for suggestions)."""
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict, source: str) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("function-after",)))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: {key}: unknown key{suggestion} (valid keys: {', '.join(valid)})"
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    msg = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{source}: {key}: {msg}{shown}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise NegsetError(f"{source}: expected a mapping of sections (ingest, embed, tag, select, export)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise NegsetError("\n".join(lines), hint="see params.yaml in the negset README for every key") from None


def load_params(path: Path | str) -> Params:
    path = Path(path)
    if not path.is_file():
        raise NegsetError(f"{path}: parameters file not found", hint="run from the project folder or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise NegsetError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path.name))
