import numpy as np
import pytest
import torch

from blipx.data import eval_transform
from blipx.data.shapes import COLORS
from blipx.data.shapes_video import (LINES, ShapesVideoDataset, describe_video, line_cells, parse_video_caption, track,
                                     video_caption_match_matrix)
from blipx.data.video import VideoTextDataset


def test_deterministic_per_seed_split_and_index_in_any_order():
    a = ShapesVideoDataset("test", num_samples=20, image_size=32, num_video_frames=4)
    b = ShapesVideoDataset("test", num_samples=20, image_size=32, num_video_frames=4)
    fwd = [a.raw(i) for i in range(20)]
    bwd = [b.raw(i) for i in reversed(range(20))][::-1]
    for x, y in zip(fwd, bwd):
        assert x["caption"] == y["caption"]
        assert all(np.array_equal(np.asarray(f), np.asarray(g)) for f, g in zip(x["video"], y["video"]))
    other_split = ShapesVideoDataset("train", num_samples=20)
    other_seed = ShapesVideoDataset("test", num_samples=20, seed=1)
    for other in (other_split, other_seed):
        assert sum(a.video(i)["caption"] == other.video(i)["caption"] for i in range(20)) < 4
    with pytest.raises(IndexError):
        a.raw(20)


def _coloured_centroid(frame, colour):
    pix = np.asarray(frame)
    ys, xs = np.nonzero((pix == colour).all(axis=-1))
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("image_size", [48, 96])
def test_the_shape_travels_the_captioned_line(image_size):
    ds = ShapesVideoDataset("val", num_samples=60, image_size=image_size, num_video_frames=6)
    cell = image_size / 3
    lines = set()
    for i in range(60):
        s = ds.raw(i)
        lines.add((s["axis"], s["line"]))
        said = parse_video_caption(s["caption"])
        assert said is not None and said[:3] == (s["size"], s["color"], s["shape"])
        start, _, end = line_cells(s["axis"], s["line"])
        (x0, y0), (x1, y1) = (_coloured_centroid(s["video"][t], COLORS[s["color"]]) for t in (0, -1))
        # First frame in the start cell, last in the end cell (the shape's pure-colour pixels).
        assert (int(y0 // cell), int(x0 // cell)) == start and (int(y1 // cell), int(x1 // cell)) == end
        xs = [_coloured_centroid(f, COLORS[s["color"]])[s["axis"] == "column"] for f in s["video"]]
        assert all(b > a for a, b in zip(xs, xs[1:]))  # moving left -> right / top -> bottom every frame
    assert lines == set(LINES)


def test_captions_name_the_cells_in_order_in_the_scene_vocabulary():
    v = {"size": "large", "color": "red", "shape": "circle"}
    ds = ShapesVideoDataset("test", num_samples=300)
    caps = {(s["axis"], s["line"]): s["caption"] for s in (ds.video(i) for i in range(300))}
    assert caps[("row", 0)].endswith(" at the top left then at the top then at the top right")
    assert caps[("row", 1)].endswith(" on the left then in the center then on the right")
    assert caps[("column", 1)].endswith(" at the top then in the center then at the bottom")
    assert caps[("column", 2)].endswith(" at the top right then on the right then at the bottom right")
    assert describe_video(v | {"axis": "row", "line": 2}) == (
        "a large red circle at the bottom left then at the bottom then at the bottom right")
    assert parse_video_caption(caps[("row", 0)])[3:] == ("at the top left", "at the top", "at the top right")
    assert track(v | {"axis": "row", "line": 2}, 3) == [(2.0, 0.0), (2.0, 1.0), (2.0, 2.0)]
    assert track(v | {"axis": "column", "line": 0}, 5)[1] == (0.5, 0.0)
    assert parse_video_caption("a large red circle at the top left") is None  # an image caption


def test_match_matrix_counts_every_video_a_caption_describes():
    ds = ShapesVideoDataset("test", num_samples=400)
    videos = [ds.video(i) for i in range(400)]
    caps = [v["caption"] for v in videos]
    pos = video_caption_match_matrix(caps, videos)
    assert pos.diagonal().all()
    same = torch.tensor([[a["caption"] == b["caption"] for b in videos] for a in videos])
    assert torch.equal(pos, same) and int(pos.sum()) > 400  # 288 distinct videos: some repeat in 400
    size, colour, shape, *places = parse_video_caption(caps[0])
    backwards = f"a {size} {colour} {shape} " + " then ".join(places[::-1])  # the other direction: not this video
    assert not video_caption_match_matrix([backwards], videos[:1]).any()


def test_export_reads_back_through_the_video_dataset(tmp_path):
    ds = ShapesVideoDataset("val", num_samples=3, image_size=32, num_video_frames=8,
                            transform=eval_transform(32))  # fmt: skip
    ann = ds.export(tmp_path)
    back = VideoTextDataset(ann, tmp_path, num_frames=8, transform=eval_transform(32))
    assert back.texts == [ds.video(i)["caption"] for i in range(3)] and back.txt2video == [0, 1, 2]
    for i in range(3):
        torch.testing.assert_close(back[i]["video"], ds[i]["video"])  # PNG round trip is lossless
    assert ds[0]["video"].shape == (8, 3, 32, 32)
