"""The scene from what is in it: detected COCO objects vote for a scene and for indoor / outdoor.

A whole-image ImageNet embedding names a cluster after objects ("vestment /
suit"); the objects a detector finds say where the photo was taken: cars and
traffic lights, a street; an oven and a sink, a kitchen. Each detection at
or over the score votes with its score; the scene with the most votes names
the image, and the indoor and outdoor votes (scenes and the loose objects
below) give the indoor/outdoor tag. Too few votes: no scene (None).
"""

from __future__ import annotations

from collections import defaultdict

# scene -> (indoor or outdoor, the COCO classes that vote for it)
SCENES: dict[str, tuple[str, frozenset[str]]] = {
    "street": ("outdoor", frozenset({"car", "bus", "truck", "traffic light", "stop sign", "fire hydrant",
                                     "parking meter", "motorcycle", "bicycle"})),
    "railway": ("outdoor", frozenset({"train"})),
    "field": ("outdoor", frozenset({"cow", "sheep", "horse", "elephant", "zebra", "giraffe", "bear"})),
    "sports ground": ("outdoor", frozenset({"sports ball", "baseball bat", "baseball glove", "tennis racket",
                                            "frisbee", "kite", "skateboard"})),
    "snow": ("outdoor", frozenset({"skis", "snowboard"})),
    "water": ("outdoor", frozenset({"surfboard", "boat"})),
    "airfield": ("outdoor", frozenset({"airplane"})),
    "kitchen": ("indoor", frozenset({"oven", "sink", "microwave", "refrigerator", "toaster"})),
    "dining room": ("indoor", frozenset({"dining table", "wine glass", "fork", "knife", "spoon", "bowl", "cup",
                                         "pizza", "cake", "sandwich", "donut", "hot dog"})),
    "bedroom": ("indoor", frozenset({"bed"})),
    "living room": ("indoor", frozenset({"couch", "remote", "potted plant", "vase", "clock"})),
    "office": ("indoor", frozenset({"keyboard", "laptop", "mouse", "tv", "book", "cell phone"})),
    "bathroom": ("indoor", frozenset({"toilet", "toothbrush", "hair drier"})),
}
# objects that say indoor or outdoor without naming a scene
LOOSE = {"chair": "indoor", "teddy bear": "indoor", "scissors": "indoor", "bottle": "indoor",
         "bench": "outdoor", "umbrella": "outdoor", "bird": "outdoor"}
_CLASS_SCENE = {c: s for s, (_, classes) in SCENES.items() for c in classes}


def scene_of(classes: list[str], scores: list[float], min_votes: float = 0.5) -> tuple[str | None, str | None, float]:
    """(scene name, indoor / outdoor, confidence) from one image's detections (class names, scores).

    Confidence: the winning side's share of the indoor + outdoor votes.
    """
    votes: dict[str, float] = defaultdict(float)
    side: dict[str, float] = defaultdict(float)
    for cls, score in zip(classes, scores):
        scene = _CLASS_SCENE.get(cls)
        if scene is not None:
            votes[scene] += score
            side[SCENES[scene][0]] += score
        elif cls in LOOSE:
            side[LOOSE[cls]] += score
    total = side["indoor"] + side["outdoor"]
    name = max(sorted(votes), key=lambda s: votes[s]) if votes and max(votes.values()) >= min_votes else None
    if total < min_votes:
        return name, None, 0.0
    where = "indoor" if side["indoor"] >= side["outdoor"] else "outdoor"
    return name, where, max(side.values()) / total


def cluster_scene(names: list[str | None]) -> str | None:
    """The scene most of a cluster's members have (at least a third of those with one, and two images)."""
    counts: dict[str, int] = defaultdict(int)
    for n in names:
        if n:
            counts[n] += 1
    if not counts:
        return None
    best = max(sorted(counts), key=lambda s: counts[s])
    return best if counts[best] >= 2 and counts[best] * 3 >= sum(counts.values()) else None
