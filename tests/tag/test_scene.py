"""The scene from detected objects: votes, indoor/outdoor, cluster names, and check-tags' figures for them."""

from __future__ import annotations

import pytest

from negset.tag.scene import cluster_scene, scene_of
from negset.tools.tagcheck import leave_one_out_guesses, scene_agreement


def test_objects_vote_for_a_scene_and_a_side():
    assert scene_of(["car", "traffic light", "person"], [0.9, 0.6, 0.9]) == ("street", "outdoor", 1.0)
    name, side, conf = scene_of(["oven", "sink", "chair", "car"], [0.8, 0.7, 0.5, 0.4])
    assert (name, side) == ("kitchen", "indoor") and conf == pytest.approx(2.0 / 2.4)
    assert scene_of(["bed"], [0.9]) == ("bedroom", "indoor", 1.0)
    assert scene_of(["keyboard", "tv"], [0.6, 0.5])[:2] == ("office", "indoor")
    assert scene_of(["person", "dog"], [0.9, 0.9]) == (None, None, 0.0)  # say nothing about the place
    assert scene_of(["car"], [0.3]) == (None, None, 0.0)  # too few votes
    assert scene_of(["bench"], [0.8]) == (None, "outdoor", 1.0)  # a side without a scene


def test_a_cluster_takes_the_scene_most_of_its_members_show():
    assert cluster_scene(["street", "street", None, "kitchen", None]) == "street"
    assert cluster_scene(["street", None, None]) is None  # one image is not a cluster's scene
    assert cluster_scene(["street", "street", "kitchen", "bedroom", "office", "field", "water"]) is None  # under a third
    assert cluster_scene([None, None]) is None


def test_scene_agreement_figures():
    truth = ["outdoor", "outdoor", "indoor", "indoor", "outdoor"]
    rows = [("outdoor", "bg0: street", 0), (None, "bg0: street", 0), ("indoor", "bg1: kitchen", 1),
            ("outdoor", "bg1: kitchen", 1), (None, "bg2: vestment / suit", 2)]
    got = scene_agreement(rows, truth)
    assert got["detected_images"] == 3 and got["coverage"] == pytest.approx(0.6)
    assert got["detected_accuracy"] == pytest.approx(2 / 3)
    loo = leave_one_out_guesses([0, 0, 1, 1, 2], truth)
    assert loo == ["outdoor", "outdoor", "indoor", "indoor", "outdoor"]  # alone in cluster 2: the overall majority
    # detected where it speaks (3 images, 2 right), else the cluster guess (images 1 and 4: both right)
    assert got["detected_else_clusters_loo"] == pytest.approx(4 / 5)
    # street -> outdoor, kitchen -> indoor: all 4 right; the ImageNet-named cluster does not count
    assert got["scene_named_images"] == 4 and got["scene_named_accuracy"] == 1.0
