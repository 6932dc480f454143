"""Which classes a detector of a COCO class most easily confuses with it: the default held-out confusers.

``negset evaluate`` holds out images of these classes (without the target)
and measures how often a probe fires on them. The default list of a COCO
class is the other classes of its COCO supercategory (a car's: bicycle,
motorcycle, airplane, bus, train, truck, boat) plus its known cross-category
confusers in ``CROSS`` (person: teddy bear, dog, cat, horse, chair; tv:
microwave, oven, refrigerator, book; potted plant: vase, broccoli; ...).
``--confusers`` replaces it; a class outside COCO has no default (every
non-target image is then a confuser).
"""

from __future__ import annotations

from negset.detect.names import normalise

# COCO's 12 supercategories and their 80 classes (instances_train2017.json "categories")
SUPERCATEGORIES: dict[str, list[str]] = {
    "person": ["person"],
    "vehicle": ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
    "outdoor": ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"],
    "animal": ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    "accessory": ["backpack", "umbrella", "handbag", "tie", "suitcase"],
    "sports": ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
               "skateboard", "surfboard", "tennis racket"],
    "kitchen": ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"],
    "food": ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
    "furniture": ["chair", "couch", "potted plant", "bed", "dining table", "toilet"],
    "electronic": ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"],
    "appliance": ["microwave", "oven", "toaster", "sink", "refrigerator"],
    "indoor": ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"],
}

# confusers across supercategories (shape, texture or setting alike), by target: one way, since a class
# that passes for the target need not be passed for by it (a dog detector fires on a teddy bear; a person
# detector on a teddy bear, a horse rider's horse, a coat on a chair)
CROSS: dict[str, list[str]] = {
    "person": ["teddy bear", "dog", "cat", "horse", "chair"],
    "teddy bear": ["dog", "cat", "bear", "person"],
    "dog": ["teddy bear"], "cat": ["teddy bear"], "bear": ["teddy bear"],
    "bird": ["kite", "airplane"], "airplane": ["bird", "kite"], "kite": ["bird", "airplane", "umbrella"],
    "boat": ["surfboard"], "surfboard": ["boat"],
    "bench": ["chair", "couch", "dining table"], "chair": ["bench"], "couch": ["bench"], "dining table": ["bench"],
    "tv": ["microwave", "oven", "refrigerator", "book"], "microwave": ["tv"], "oven": ["tv"], "refrigerator": ["tv"],
    "laptop": ["book"], "book": ["laptop", "cell phone"], "cell phone": ["book"],
    "toilet": ["sink"], "sink": ["toilet", "bowl"],
    "potted plant": ["vase", "broccoli"], "vase": ["potted plant", "bottle", "cup"], "broccoli": ["potted plant"],
    "cup": ["vase"], "bottle": ["vase"], "bowl": ["sink", "vase"],
    "clock": ["frisbee", "stop sign"], "frisbee": ["clock"], "stop sign": ["clock"],
    "sports ball": ["orange", "apple"], "orange": ["sports ball"], "apple": ["sports ball"],
    "scissors": ["knife"], "knife": ["scissors"],
}

COCO_CLASSES: list[str] = [c for group in SUPERCATEGORIES.values() for c in group]


def default_confusers(target: str) -> list[str] | None:
    """The target's supercategory peers, then its cross-category partners (COCO names); None outside COCO."""
    t = normalise(target)
    group = next((g for g in SUPERCATEGORIES.values() if t in g), None)
    if group is None:
        return None
    return [c for c in group if c != t] + [c for c in CROSS.get(t, []) if c not in group]
