"""The params.yaml schema: every knob, one section per pipeline step.

``load_params`` validates the file and turns each mistake into one line that
names the key, what was expected and what was found; an unknown key names the
closest valid one.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from negset.core.errors import NegsetError

STRATA_AXES = ("lighting", "background", "occlusion")


class _KeyValueError(ValueError):
    """A value error about one key of a section, raised by a section-wide check (the error names the key)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    # no inf/NaN in any number (select.ratio: .inf would overflow later)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any) -> Any:
        """``count: true`` is a mistake, not 1: a number key refuses true/false (pydantic would take it as 1/0)."""
        if isinstance(value, dict):
            for key, v in value.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(v, bool) and field is not None:
                    kinds = set(getattr(field.annotation, "__args__", ()) or (field.annotation,))
                    if kinds & {int, float} and bool not in kinds:
                        raise _KeyValueError(key, f"expected a number, got a boolean ({str(v).lower()})")
        return value


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
    follow_symlinks: bool = Field(False, description="read symlinked files (where they point); default: listed as rejected")


IMAGE_SUFFIXES = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
_CREDENTIAL_KEYS = ("access_key", "secret", "session_token", "password", "credentials", "token")


def _refuse_credentials(value: Any) -> Any:
    """Credentials come from the AWS chain only; never echo the value back."""
    if isinstance(value, dict):
        for key in value:
            if any(c in str(key).lower() for c in _CREDENTIAL_KEYS):
                raise ValueError(
                    f"'{key}': credentials are not accepted in params.yaml; use the standard AWS chain "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or an instance/role)"
                )
    return value


def _no_userinfo(url: str | None) -> str | None:
    if url is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("the URL must not contain credentials (user:password@)")
    return url


class _RemoteSource(_Section):
    workers: int = Field(16, ge=1, le=256, description="concurrent downloads")
    max_attempts: int = Field(8, ge=1, le=50, description="tries per request (throttling, 5xx, resets, timeouts)")
    timeout: float = Field(60.0, gt=0, description="connect/read timeout per request, seconds")
    max_size: int | None = Field(None, gt=0, description="objects larger than this many bytes are skipped")

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return _refuse_credentials(value)


class S3Connection(_RemoteSource):
    """How to reach S3 (or an S3-compatible store); credentials from the AWS chain only."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, ...); default AWS")
    region: str | None = None
    profile: str | None = Field(None, description="AWS profile name (credentials stay in ~/.aws)")
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    anonymous: bool = Field(False, description="unsigned requests, for public buckets")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _no_userinfo(value)


class S3Source(S3Connection):
    """An S3 bucket (some prefixes of it) as a candidate source."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefixes: list[str] = Field(default_factory=lambda: [""], min_length=1)
    recursive: bool = Field(True, description="false: only the keys directly under each prefix")
    suffixes: list[str] = Field(default_factory=lambda: list(IMAGE_SUFFIXES))
    min_size: int = Field(1, ge=0)
    modified_after: datetime | None = None

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if "/" in value or value.startswith("s3:"):
            raise ValueError("expected a bucket name only (put the key prefixes under 'prefixes')")
        return value

    @field_validator("prefixes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("suffixes")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [s.lower() if s.startswith(".") or not s else "." + s.lower() for s in value]

    @field_validator("modified_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class HttpSource(_RemoteSource):
    """A list of http(s) URLs (text, one per line, or CSV with a url column)."""

    type: Literal["http"]
    urls: str = Field(description="the URL list file, relative to params.yaml")
    workers: int = Field(8, ge=1, le=256)
    max_size: int | None = Field(50_000_000, gt=0, description="refuse objects larger than this many bytes")


def _default_local(value: Any) -> Any:
    if isinstance(value, list):
        return [dict(v, type="local") if isinstance(v, dict) and "type" not in v else v for v in value]
    return value


SourceSpec = Annotated[Union[LocalSource, S3Source, HttpSource], Field(discriminator="type")]


class Ingest(_Section):
    target: list[str] = Field(min_length=1, description="class name(s) the negatives must not contain")
    positives: Positives
    sources: list[SourceSpec] = Field(
        default_factory=list, description="candidate sources; empty = the folders (or S3 prefixes) the positives live in"
    )
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger images are refused before decoding")
    source_depth: int = Field(0, ge=0, le=16, description="default sources: the positives' folder/prefix "
                              "(0, not recursive) or the one this many levels up (recursive)")
    s3: S3Connection = Field(default_factory=S3Connection, description="connection for s3:// positives and "
                             "the default S3 sources")
    include_positive_folders: bool = Field(
        False, description="with sources listed: also draw candidates from the folders the positives live in"
    )

    @field_validator("target", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("sources", mode="before")
    @classmethod
    def _type_defaults_to_local(cls, value: Any) -> Any:
        return _default_local(value)


class Embed(_Section):
    model: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0 (offline default), timm:NAME or torchvision:NAME",
    )
    weights: str | None = Field(None, description="local weights file for timm/torchvision models")
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1, le=4096)
    threads: int = Field(0, ge=0, description="cores to use; 0 = all: on ONNX Runtime one batch per core, each run on one thread; N: N threads in each run (torch: its threads)")
    checkpoint_every: int = Field(256, ge=1, description="images between writes to the embedding cache")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="auto: ONNX Runtime on CPU (same vectors within 1e-4, ~2x faster), torch on CUDA"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    dask_workers: int = Field(0, ge=0, description="embed on a local Dask cluster of this many worker processes; 0 = here")
    dask_address: str | None = Field(None, description="embed on an existing Dask cluster (tcp://scheduler:8786)")
    regions: int = Field(
        0, ge=0, le=6,
        description="also embed a G x G grid of crops of every image and the positives' target objects "
        "(negset/regions.py: object-level hardness for select); 0 = off",
    )
    regions_from: Literal["map", "crops"] = Field(
        "crops", description="map: region vectors are pooled windows of the whole-image pass's last feature map "
        "(no extra model pass; efficientnet_lite0 only, other models crop); crops: each region cropped and embedded",
    )
    objects_from: Literal["crops", "map"] = Field(
        "crops", description="with regions_from: map, the positives' target objects: crops = cropped and embedded "
        "(one pass per object, positives only); map = the mean of their cells of their image's feature map",
    )


class DetectSource(_Section):
    """One source of detection evidence: an ONNX detector (``model``) or a predictions file (``predictions``)."""

    name: str | None = Field(None, description="name kept with each detection; default: the model or file name")
    model: str | None = Field(
        None, description="ONNX detector file, or builtin:yolox_nano (shipped with negset, COCO 80 classes)"
    )
    predictions: str | None = Field(
        None, description="the user's model's predictions on the pool: a COCO results JSON or a folder of YOLO txt files"
    )
    classes: str | None = Field(
        None, description="class names, one a line (or a YOLO data.yaml); default: the ONNX metadata 'names'"
    )
    coco: str | None = Field(
        None, description="predictions JSON with image_id / category_id: the COCO file naming those ids "
        "(default: ingest.positives.path when it is a COCO file)"
    )
    layout: Literal["auto", "yolox", "ultralytics"] = Field(
        "auto", description="output layout: yolox [1, N, 5 + classes], ultralytics [1, 4 + classes, N]; auto = from the shape"
    )
    input_size: int | None = Field(None, ge=32, le=4096, description="square input side; default: the model's input shape (else 640)")
    letterbox: Literal["auto", "topleft", "center"] = Field(
        "auto", description="where the resized image sits on the padded canvas (auto: yolox topleft, ultralytics center)"
    )
    color: Literal["auto", "rgb", "bgr"] = Field("auto", description="channel order (auto: yolox bgr, ultralytics rgb)")
    scale: float | None = Field(None, gt=0, description="pixel values times this (auto: yolox 1, ultralytics 1/255)")
    mean: list[float] | None = Field(None, min_length=3, max_length=3, description="subtracted per channel after scale")
    std: list[float] | None = Field(None, min_length=3, max_length=3, description="divided per channel after mean")
    pad_value: float = Field(114.0, ge=0, le=255, description="canvas fill (0-255) around the letterboxed image")
    grid_decode: bool = Field(
        True, description="yolox: decode grid offsets and log sizes (the official export leaves it out); false = boxes in pixels"
    )
    canvas: Literal["square", "fit"] = Field(
        "square", description="square: the model's square input; fit: the letterboxed image on a canvas only as large "
        "as it needs, each side rounded up to a multiple of 32 (a 4:3 photo: 416 x 320, about 20% less model time, but "
        "on COCO128 it found fewer hidden targets: dog 0.90, person 0.97 instead of 1.00, 0.99; README \"Detect\"); "
        "a model that takes no other input shape stays square, with a warning",
    )
    tiles: int = Field(0, ge=0, le=4, description="also run on a G x G grid of overlapping crops (small objects); 0 = whole image only")
    tile_overlap: float = Field(0.3, ge=0, lt=0.9, description="share of each tile shared with its neighbour")
    tiles_when: Literal["always", "unsure", "weak"] = Field(
        "weak", description="always: tiles on every image; unsure: only where the whole image does not already show "
        "the target at or above detect.calibration.ceiling (the target decision is the same; fewer model passes); "
        "weak: as unsure, and only where the whole image has a raw target score at or above tile_probe, and only "
        "the tiles holding that signal (README \"Detect\": where tiles pay)",
    )
    tile_probe: float = Field(
        0.01, ge=0, le=1, description="tiles_when weak: the raw target score (before min_score) on the whole image "
        "that earns an image its tiles; the tiles that hold an anchor at or above it run",
    )
    tile_size: int | None = Field(
        None, ge=32, le=4096, description="square input side of the tiles (a smaller side costs less); default: input_size",
    )
    min_score: float = Field(0.05, ge=0, le=1, description="detections scoring under this are dropped (weak ones are evidence too)")
    iou: float = Field(0.45, gt=0, le=1, description="per-class non-maximum suppression IoU")
    max_detections: int = Field(100, ge=1, le=10000, description="at most this many detections per image (highest scores)")
    threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = all cores, one image per core, each run on one thread; N: one image at a time on N threads")

    @model_validator(mode="after")
    def _one_kind(self) -> "DetectSource":
        if (self.model is None) == (self.predictions is None):
            raise ValueError("set exactly one of 'model' (an ONNX detector) or 'predictions' (a predictions file or folder)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        spec = self.model or self.predictions or ""
        return spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec.rstrip("/")).stem or spec


class Calibration(_Section):
    """The target threshold, calibrated on the known positives (per source)."""

    recall: float = Field(
        1.0, gt=0, le=1, description="the threshold still finds the target in this share of the positives (their max target score)"
    )
    floor: float = Field(0.05, ge=0, le=1, description="the threshold is never under this")
    ceiling: float = Field(0.1, ge=0, le=1, description="... nor over this (also the threshold of a source no positive can calibrate)")
    threshold: float | None = Field(None, ge=0, le=1, description="a fixed threshold instead of the calibration")

    @model_validator(mode="after")
    def _ordered(self) -> "Calibration":
        if self.floor > self.ceiling:
            raise ValueError("expected floor <= ceiling")
        return self


class Detect(_Section):
    sources: list[DetectSource] = Field(
        default_factory=list, description="detectors and prediction files to run/read; empty = no detection evidence"
    )
    target_map: dict[str, str] = Field(
        default_factory=dict, description="detector class -> target name (e.g. {handbag: sample bag}); target names count as themselves"
    )
    confusers: list[str] | None = Field(
        None, description="detector classes easily confused with the target; null = the COCO default confusers of the "
        "target (and of the classes target_map maps to it) that the detector knows (negset/tools/confusers.py); [] = none"
    )
    calibration: Calibration = Calibration()
    checkpoint_every: int = Field(64, ge=1, description="images between writes to the detection cache")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[DetectSource]) -> list[DetectSource]:
        names = [s.label for s in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two sources are named {dup[0]!r}; give each a distinct 'name'")
        return value


class LightingExif(_Section):
    """Scene light from the camera's EXIF (when a JPEG has it): it can only make a class darker."""

    use: bool = Field(True, description="read ExposureTime, FNumber, ISO, Flash and DateTimeOriginal when present")
    dark_ev: float = Field(3.0, ge=-10, le=25, description="exposure value (EV at ISO 100) under this: dark")
    dim_ev: float = Field(7.0, ge=-10, le=25, description="EV100 under this: dim (a dark-looking image stays dark)")
    night_from: int = Field(21, ge=0, le=23, description="DateTimeOriginal hour from which it is night")
    night_until: int = Field(5, ge=0, le=23, description="... and until which (exclusive) it is night")
    night_class: Literal["dark", "dim"] = Field("dim", description="class of a night shot (no EV, or EV not low)")


class Lighting(_Section):
    dark_below: float = Field(50.0, ge=0, le=255, description="median luminance under this: dark")
    dim_below: float = Field(95.0, ge=0, le=255, description="median luminance under this: dim")
    bright_above: float = Field(175.0, ge=0, le=255, description="median luminance over this: bright")
    high_contrast_std: float = Field(75.0, ge=0, le=255, description="luminance std at or over this: high-contrast")
    clipped_share: float = Field(
        0.08, gt=0, le=1,
        description="this share of pixels clipped to black (<=5) AND this share clipped to white (>=250): high-contrast",
    )
    warm_above: float = Field(1.15, gt=0, description="mean R / mean B over this: colour temperature warm")
    cool_below: float = Field(0.9, gt=0, description="mean R / mean B under this: cool (else neutral)")
    confidence_scale: float = Field(
        20.0, gt=0, description="luminance levels from the nearest class threshold at which the confidence reaches 1"
    )
    exif: LightingExif = LightingExif()

    @model_validator(mode="after")
    def _ordered(self) -> "Lighting":
        if not self.dark_below <= self.dim_below <= self.bright_above:
            raise ValueError("expected dark_below <= dim_below <= bright_above")
        if not self.cool_below <= self.warm_above:
            raise ValueError("expected cool_below <= warm_above")
        if not self.exif.dark_ev <= self.exif.dim_ev:
            raise ValueError("expected exif.dark_ev <= exif.dim_ev")
        return self


class Panoptic(_Section):
    """COCO panoptic labels: the background tag from the stuff classes (source ``annotation``)."""

    json_path: str = Field(alias="json", description="the COCO panoptic JSON (segments_info per image, categories)")
    masks: str | None = Field(None, description="folder of the panoptic PNGs (needed by check-tags for occlusion)")
    value: Literal["scene", "stuff", "both"] = Field(
        "scene", description="background value: scene = indoor/outdoor, stuff = dominant stuff class, both = 'outdoor: grass'"
    )


class Background(_Section):
    clusters: int = Field(0, ge=0, le=256, description="number of background clusters; 0 = sqrt(n/2), 2..12")
    seed: int = 0
    refit_share: float = Field(
        0.2, ge=0, le=1, description="refit the clusters when more than this share of images is new since the last fit"
    )
    confidence_margin: float = Field(
        0.1, gt=0, le=2, description="cosine margin (nearest minus second-nearest centre) at which the confidence reaches 1"
    )
    panoptic: Panoptic | None = Field(None, description="COCO panoptic labels to read the background from")
    scene_score: float | None = Field(
        0.3, ge=0, le=1,
        description="detections (detect step) scoring at least this vote for each image's scene (street, kitchen, ...) "
        "and indoor/outdoor, and name the clusters by scene; null = off",
    )


class Detector(_Section):
    """A torchvision detector for occlusion of images without box labels (weights from a local file)."""

    model: Literal[
        "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn",
        "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
    ] = Field("fasterrcnn_mobilenet_v3_large_fpn", description="torchvision.models.detection builder")
    weights: str = Field(description="local state_dict file (torch.save(model.state_dict(), path)); never downloaded")
    num_classes: int = Field(91, ge=2, description="classes of the weights (91 for COCO-trained torchvision weights)")
    score: float = Field(0.5, ge=0, le=1, description="boxes scoring at least this count as objects")
    max_side: int = Field(640, ge=64, le=4096, description="images are reduced to this longest side first")


class Occlusion(_Section):
    edge_margin: float = Field(0.01, ge=0, lt=0.5, description="a box this close to the frame edge is cut")
    overlap: float = Field(0.2, gt=0, le=1, description="a box this much covered by another is occluded")
    heavy_share: float = Field(0.5, gt=0, le=1, description="share of occluded objects that makes 'heavy'")
    detector: Detector | None = Field(None, description="detector for images without box labels; null = unknown")
    detected_score: float | None = Field(
        0.4, ge=0, le=1,
        description="images without box labels: the detect step's boxes scoring at least this go through the "
        "box rule (source detector); null = not used",
    )


class Tag(_Section):
    lighting: Lighting = Lighting()
    background: Background = Background()
    occlusion: Occlusion = Occlusion()
    user_tags: str | None = Field(
        None, description="CSV or JSON of user tags (key: file, uri or sha256; columns lighting/background/occlusion)"
    )


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
    """Thresholds on the quality scores (negset/tag/quality.py); under = rejected; null = off."""

    dark: float | None = Field(0.22, ge=0, le=1)
    light: float | None = Field(0.05, ge=0, le=1)
    low_information: float | None = Field(0.3, ge=0, le=1)
    near_uniform: float | None = Field(0.05, ge=0, le=1)
    blurry: float | None = Field(0.1, ge=0, le=1)
    odd_aspect_ratio: float | None = Field(0.4, ge=0, le=1)
    tiny: float | None = Field(0.25, ge=0, le=1)


class Select(_Section):
    count: int | None = Field(8, ge=1, description="number of negatives to choose (default 8 unless ratio is set)")
    ratio: float | None = Field(None, gt=0, description="negatives per positive, used when count is not set")
    seed: int = 0
    quota: Literal["match", "uniform"] = Field("match", description="match: the positives' strata distribution; uniform: even over strata")
    strata: list[Literal["lighting", "background", "occlusion"]] = Field(
        default_factory=lambda: list(STRATA_AXES), min_length=1
    )
    min_per_stratum: int = Field(0, ge=0, description="each stratum with positives gets at least this many (if it has them)")
    top_k: int = Field(5, ge=1, description="similarity to the positives = mean of the top-k cosine similarities")
    hardness: Literal["auto", "image", "regions", "evidence", "combined"] = Field(
        "auto",
        description="what makes a negative hard (the bands): image = whole-image similarity to the positives; "
        "regions = the best match between a crop of the candidate and a target object of the positives "
        "(needs embed.regions > 0); evidence = the detect step's distractor evidence (a weak target score "
        "relative to the threshold, a confuser's score); combined = the mean percentile rank of the object "
        "similarity and that evidence; auto = regions when embedded, else image",
    )
    diversity: Literal["kcenter", "random"] = Field("kcenter", description="picks inside a stratum: k-center greedy or seeded random")
    unknown_axis_share: float | None = Field(
        0.5, ge=0, le=1,
        description="a stratum axis 'unknown' for more than this share of the candidates (and not for most positives) "
        "is left out of the quotas, with a warning; null = never",
    )
    weak_detection_percentile: float | None = Field(
        50.0, ge=0, le=100,
        description="an unlabelled candidate with a target detection under the calibrated threshold is quarantined "
        "too when its hardness reaches this percentile of the unlabelled candidates'; null = only detections at the threshold",
    )
    distractors: float = Field(
        0.5, ge=0, le=1,
        description="share of the negatives offered first to detector distractors: eligible candidates on which the "
        "detect step sees a detect.confusers class near the target threshold, strongest first; 0 = off (no detection evidence: none)",
    )
    distractor_min: float = Field(
        0.5, ge=0,
        description="a distractor's detection score relative to its source's target threshold is at least this",
    )
    leaks: Leaks = Leaks()
    quarantine: Quarantine = Quarantine()
    bands: Bands = Bands()
    context: Context = Context()
    quality: Quality = Quality()

    @model_validator(mode="before")
    @classmethod
    def _ratio_without_count(cls, value: Any) -> Any:
        """``ratio`` alone means negatives per positive: the default count must not win over it."""
        if isinstance(value, dict) and value.get("ratio") is not None and "count" not in value:
            return dict(value, count=None)
        return value

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
    detect: Detect = Detect()
    tag: Tag = Tag()
    select: Select = Select()
    export: Export = Export()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through list, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and not out:
        out += _models_in(origin)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (for suggestions)."""
    models: list[type[BaseModel]] = [Params]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == part
                  or getattr(m.model_fields.get("type"), "annotation", None) is not None
                  and part in getattr(m.model_fields["type"].annotation, "__args__", ())]
        if tagged:  # a discriminated union names the chosen member by its tag
            models = tagged
            continue
        models = [n for m in models if part in m.model_fields for n in _models_in(m.model_fields[part].annotation)]
        if not models:
            return None
    return models[0] if len(models) == 1 else None


def _key(part: Any) -> Any:
    return str(part) if isinstance(part, int) else part


def _describe(error: dict, source: str) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("function-after",)))
    about = (error.get("ctx") or {}).get("error")
    if isinstance(about, _KeyValueError):  # a section-wide check that names its key
        loc, error = loc + (about.key,), dict(error, msg=str(about), input={})
    # a source's type tag (ingest.sources.0.s3.bucket) is not a key the user wrote
    shown_loc = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in _SOURCE_TAGS)]
    key = ".".join(p if isinstance(p, str) and p.isprintable() else repr(p) for p in map(_key, shown_loc)) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        valid = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(str(loc[-1]).strip(), valid, n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: {key}: unknown key{suggestion} (valid keys: {', '.join(valid)})"
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    msg = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f", got {_redact(repr(got))}"
    return f"{source}: {key}: {msg}{shown}"


_SOURCE_TAGS = ("local", "s3", "http")


def _redact(text: str) -> str:
    """Hide a user:password@ part of a URL so that an error never shows a secret."""
    return re.sub(r"//[^/\s@']*@", "//***@", text)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if isinstance(raw, dict):  # `select:` with nothing under it is the defaults, like a missing section
        raw = {k: ({} if v is None and k in Params.model_fields and k != "ingest" else v) for k, v in raw.items()}
    if not isinstance(raw, dict):
        raise NegsetError(f"{source}: expected a mapping of sections (ingest, embed, detect, tag, select, export)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise NegsetError("\n".join(lines), hint="see params.yaml in the negset README for every key") from None


# libyaml's parser (PyYAML's C extension, in its wheels) reads params.yaml 8x faster than the pure-Python
# one: 2 ms instead of 14 ms, twice in each of the seven `negset STEP` processes of a `dvc repro`
FastSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str):
    """``yaml.safe_load`` with libyaml's parser when PyYAML has it (the same values)."""
    return yaml.load(text, Loader=FastSafeLoader)  # noqa: S506 - a SafeLoader


class _UniqueKeys:
    """Refuses a key given twice in one mapping (YAML lets the last one win, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != key_node.start_mark.line + 1:
                raise DuplicateKey(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _UniqueKeyLoader(_UniqueKeys, FastSafeLoader):
    """``safe_load`` that refuses a key given twice."""


class _UniqueKeyPyLoader(_UniqueKeys, yaml.SafeLoader):
    """The same in pure Python: its syntax errors show the offending line (libyaml's name only its position)."""


class DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def load_params(path: Path | str) -> Params:
    path = Path(path)
    if not path.is_file():
        raise NegsetError(f"{path}: parameters file not found", hint="run from the project folder or pass --params")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            raw = yaml.load(text, Loader=_UniqueKeyPyLoader)  # noqa: S506 - raises it again, with the line shown
    except DuplicateKey as dup:
        raise NegsetError(f"{path.name}:{dup.again}: key '{dup.key}' is given twice (lines {dup.first} and {dup.again}); "
                          "YAML would keep only the last", hint="remove one of them") from None
    except yaml.YAMLError as exc:
        raise NegsetError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise NegsetError(f"{path}: not a text file (params.yaml is UTF-8 YAML)") from None
    return parse_params(raw, source=str(path.name))
