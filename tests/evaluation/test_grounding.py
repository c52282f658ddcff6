"""Grounding scoring (blipx.evaluation.grounding) on hand-computed examples: the official IoU
and box scores of salesforce/ALBEF dataset/utils.py, the per-split accuracy, and the shapes hit rule."""

from __future__ import annotations

import json

import pytest
import torch

from blipx.data.grounding import Refer
from blipx.evaluation.grounding import (best_box, box_scores, compute_iou, eval_grounding, grounding_accuracy,
                                        peak_cell, peak_in_cell, upsample_map)


def test_iou_by_hand():
    # [x, y, w, h] with pixel-inclusive corners: [0, 9] x [0, 9] and [5, 14] x [5, 14] overlap in a
    # 5x5 block; union 100 + 100 - 25.
    assert compute_iou([0, 0, 10, 10], [5, 5, 10, 10]) == pytest.approx(25 / 175)
    assert compute_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert compute_iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0  # touching: x2 = 9 < 10
    # a one-pixel overlap column: official requires x1 < x2 strictly, so it counts as 0
    assert compute_iou([0, 0, 10, 10], [9, 0, 10, 10]) == 0.0
    assert compute_iou([0, 0, 4, 4], [1, 1, 2, 2]) == pytest.approx(4 / 16)


def test_box_scores_by_hand():
    mask = torch.zeros(6, 8)
    mask[1:3, 2:4] = 1.0  # 4 pixels of mass at rows 1-2, cols 2-3
    boxes = [[2, 1, 2, 2], [0, 0, 8, 6], [2.7, 1.2, 1.9, 1.5], [5, 4, 2, 2]]
    # alpha 0.5: mass / sqrt(area). Box 3 slices int(1.2):int(2.7) x int(2.7):int(4.6) = rows 1, cols 2-3.
    assert box_scores(mask, boxes) == pytest.approx([4 / 2, 4 / (48 ** 0.5), 2 / (1.9 * 1.5) ** 0.5, 0.0])
    assert box_scores(mask, boxes, alpha=0.0) == pytest.approx([4, 4, 2, 0])
    assert box_scores(mask, boxes, alpha=1.0)[0] == pytest.approx(1.0)


def test_best_box_ranks_the_upsampled_map():
    cam = torch.zeros(2, 2)
    cam[1, 0] = 1.0  # the bottom-left quarter
    boxes = [[0, 0, 10, 10], [0, 10, 10, 10], [10, 10, 10, 10], [0, 0, 20, 20]]
    assert best_box(cam, boxes, 20, 20) == [0, 10, 10, 10]
    assert best_box(cam, [], 20, 20) is None
    up = upsample_map(cam, 20, 20)
    assert up.shape == (20, 20) and up[15, 5] > up[5, 15]
    # ties keep the first box, as the official strict '>' does
    assert best_box(torch.ones(2, 2), [[0, 0, 10, 10], [10, 10, 10, 10]], 20, 20) == [0, 0, 10, 10]
    # every box scoring <= 0 still gives the best of them (the official loop reused a stale box)
    neg = -torch.ones(2, 2)
    assert best_box(neg, [[0, 0, 10, 10], [0, 0, 2, 2]], 20, 20) == [0, 0, 2, 2]


def test_grounding_accuracy_per_split():
    refer = Refer(refs={1: {"image_id": 7, "split": "val"}, 2: {"image_id": 7, "split": "val"},
                        3: {"image_id": 8, "split": "testA"}, 4: {"image_id": 9, "split": "testB"}},
                  boxes={1: [0, 0, 10, 10], 2: [10, 10, 10, 10], 3: [0, 0, 10, 10], 4: [0, 0, 5, 5]},
                  images={7: {"height": 20, "width": 20}, 8: {"height": 20, "width": 20},
                          9: {"height": 20, "width": 20}})
    dets = {"7": [[0, 0, 10, 10, 0.9], [10, 10, 10, 10, 0.8]], "8": [[1, 1, 10, 10]], "9": []}
    top_left, bottom_right = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    preds = [(1, top_left), (2, top_left), (3, top_left), (4, top_left)]
    acc = grounding_accuracy(preds, refer, dets)
    # ref 1 hit, ref 2 missed (gt bottom right); ref 3: IoU([0,0,10,10],[1,1,10,10]) = 81/119 >= 0.5;
    # ref 4: no detections -> a miss
    assert acc == {"testA_d": 1.0, "testA_n": 1, "testB_d": 0.0, "testB_n": 1, "val_d": 0.5, "val_n": 2}
    acc = grounding_accuracy([(2, bottom_right)], refer, dets)
    assert acc["val_d"] == 1.0


def test_shapes_hit_rule():
    cam = torch.zeros(3, 3)
    cam[2, 1] = 0.5
    cam[0, 0] = 0.2
    assert peak_cell(cam) == (2, 1)
    assert peak_in_cell(cam, (2, 1)) and not peak_in_cell(cam, (0, 0))
    # a finer patch grid: patch (i, j) of 6x6 lies in cell (i // 2, j // 2)
    fine = torch.zeros(6, 6)
    fine[3, 5] = 1.0
    assert peak_cell(fine) == (1, 2)
    # a flat map peaks at its first patch (argmax takes the first)
    assert peak_cell(torch.zeros(3, 3)) == (0, 0)


def test_eval_grounding_runs_on_shapes_and_refcoco(tmp_path):
    from PIL import Image

    from blipx.models import create_model

    m = create_model("blip_tiny", "retriever", image_size=48, patch_size=16)
    out = eval_grounding(m, "shapes_grounding", num_samples=8, batch_size=4)
    assert out["expressions"] == 8 and 0 <= out["hits"] <= 100 and 33 <= out["chance"] <= 50
    assert out["layer"] == 0
    # the RefCOCO+ path end to end on a two-expression miniature
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "val.json").write_text(json.dumps([{"image": "a.jpg", "text": "the man", "ref_id": 1},
                                                   {"image": "a.jpg", "text": "the dog", "ref_id": 2}]))
    data = tmp_path / "data" / "refcoco+"
    data.mkdir(parents=True)
    (data / "refs(unc).json").write_text(json.dumps([{"ref_id": 1, "ann_id": 5, "image_id": 3, "split": "val"},
                                                     {"ref_id": 2, "ann_id": 6, "image_id": 3, "split": "val"}]))
    (data / "instances.json").write_text(json.dumps({"images": [{"id": 3, "height": 30, "width": 40}],
                                                     "annotations": [{"id": 5, "bbox": [0, 0, 40, 30]},
                                                                     {"id": 6, "bbox": [0, 0, 3, 3]}]}))
    (tmp_path / "dets.json").write_text(json.dumps({"3": [[0, 0, 40, 30]]}))
    out = eval_grounding(m, str(tmp_path / "val.json"), refcoco_data=str(tmp_path / "data"),
                         det_file=str(tmp_path / "dets.json"), image_root=str(tmp_path / "imgs"))
    assert out == {"expressions": 2, "val_d": 0.5, "val_n": 2}  # the only box: right for ref 1 only
    with pytest.raises(ValueError, match="refcoco_data"):
        eval_grounding(m, str(tmp_path / "val.json"))
