"""Zero-shot video retrieval: frame sampling, BLIP's video scores against a transcription of
salesforce/BLIP eval_retrieval_video.py, the metrics, frame-folder videos and the CLI."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blipx.data import eval_transform
from blipx.data.video import VideoTextDataset, read_video, uniform_frame_indices
from blipx.evaluation.retrieval import NEG_INF_SCORE
from blipx.evaluation.video import (EncodedVideos, encode_videos, eval_video_retrieval, video_retrieval_metrics,
                                    video_retrieval_scores)
from blipx.models import create_model
from blipx.tokenizer import bert_tokenizer, blip_tokenizer

TEXTS = ["a red circle moving", "a blue square", "a green triangle from the top", "an orange diamond",
         "a purple thing", "nothing at all", "two shapes moving to the left"]  # fmt: skip


# ---------------------------------------------------------------- frame sampling


@pytest.mark.parametrize("vlen, n, expected", [
    (300, 8, [0, 37, 74, 111, 148, 185, 222, 259]),  # step int(37.5) = 37: frames 260-299 never sampled
    (10, 4, [0, 2, 4, 6]),  # 2.5 -> 2, not [0, 2, 5, 7]
    (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (16, 8, [0, 2, 4, 6, 8, 10, 12, 14]),
    (15, 8, [0, 1, 2, 3, 4, 5, 6, 7]),  # 1.875 -> 1: the second half is never sampled
    (7, 3, [0, 2, 4]),
    (1, 1, [0]),
])  # fmt: skip
def test_uniform_sampling_is_the_official_numpy_formula(vlen, n, expected):
    assert uniform_frame_indices(vlen, n) == expected
    assert np.arange(0, vlen, vlen / n, dtype=int).tolist() == expected  # video_dataset.py's expression


def test_uniform_sampling_matches_numpy_wherever_numpy_gives_num_frames():
    for n in range(1, 17):
        for vlen in range(n, 400):
            official = np.arange(0, vlen, vlen / n, dtype=int).tolist()
            ours = uniform_frame_indices(vlen, n)
            assert len(ours) == n
            assert ours == official[:n], (vlen, n)  # official has n + 1 entries for e.g. (17, 7): first n kept


def test_uniform_sampling_of_a_clip_shorter_than_num_frames_uses_every_frame():
    # Officially np.arange(0, 3, 3 / 8, dtype=int) is frame 0 eight times; here every frame is used.
    assert np.arange(0, 3, 3 / 8, dtype=int).tolist() == [0] * 8
    assert uniform_frame_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert uniform_frame_indices(1, 4) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="num_frames"):
        uniform_frame_indices(10, 0)
    with pytest.raises(ValueError, match="at least one frame"):
        uniform_frame_indices(0, 8)


# ---------------------------------------------------------------- scores vs the official math


def _official_video_scores(model, tok, videos, texts, k_test):
    """salesforce/BLIP eval_retrieval_video.py ``evaluation`` (single process), in blipx module
    names; score matrices [N_vid, N_txt] / [N_txt, N_vid] (officially both len(texts) square)."""
    text_input = tok(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    text_output = model.text_encoder(text_input.input_ids, attention_mask=text_input.attention_mask, mode="text")
    text_embeds = F.normalize(model.text_proj(text_output.last_hidden_state[:, 0, :]))
    text_ids = text_input.input_ids.clone()
    text_atts = text_input.attention_mask
    text_ids[:, 0] = model.config.text.enc_token_id  # tokenizer.additional_special_tokens_ids[0] = [ENC]

    B, N, C, W, H = videos.size()
    video = videos.view(-1, C, W, H)
    video_feat = model.visual_encoder(video)
    video_embed = model.vision_proj(video_feat[:, 0, :])
    video_embed = video_embed.view(B, N, -1).mean(dim=1)
    video_embeds = F.normalize(video_embed, dim=-1)
    video_feats = video_feat.view(B, -1, video_feat.shape[-1])

    sims_matrix = video_embeds @ text_embeds.t()
    score_v2t = torch.full((B, len(texts)), -100.0)
    for i, sims in enumerate(sims_matrix):
        topk_sim, topk_idx = sims.topk(k=k_test, dim=0)
        encoder_output = video_feats[i].repeat(k_test, 1, 1)
        encoder_att = torch.ones(encoder_output.size()[:-1], dtype=torch.long)
        output = model.text_encoder(text_ids[topk_idx], attention_mask=text_atts[topk_idx],
                                    encoder_hidden_states=encoder_output, encoder_attention_mask=encoder_att)
        score = model.itm_head(output.last_hidden_state[:, 0, :])[:, 1]
        score_v2t[i, topk_idx] = score + topk_sim
    sims_matrix = sims_matrix.t()
    score_t2v = torch.full((len(texts), B), -100.0)
    for i, sims in enumerate(sims_matrix):
        topk_sim, topk_idx = sims.topk(k=k_test, dim=0)
        encoder_output = video_feats[topk_idx]
        encoder_att = torch.ones(encoder_output.size()[:-1], dtype=torch.long)
        output = model.text_encoder(text_ids[i].repeat(k_test, 1), attention_mask=text_atts[i].repeat(k_test, 1),
                                    encoder_hidden_states=encoder_output, encoder_attention_mask=encoder_att)
        score = model.itm_head(output.last_hidden_state[:, 0, :])[:, 1]
        score_t2v[i, topk_idx] = score + topk_sim
    return score_v2t, score_t2v, sims_matrix.t()


@pytest.fixture(scope="module")
def blip_tiny():
    torch.manual_seed(0)
    return create_model("blip_tiny", "retriever").eval()


@pytest.mark.parametrize("k_test", [3, 5])
def test_blip_scores_match_a_transcription_of_eval_retrieval_video(blip_tiny, k_test):
    torch.manual_seed(1)
    videos = torch.randn(5, 3, 3, 32, 32)  # 5 videos x 3 frames
    with torch.no_grad():
        want_v2t, want_t2v, want_sims = _official_video_scores(blip_tiny, blip_tokenizer(), videos, TEXTS, k_test)
        v2t, t2v, sims = video_retrieval_scores(blip_tiny, videos, TEXTS, k_test=k_test, itm_batch_size=7,
                                                video_batch_size=2)  # fmt: skip
    torch.testing.assert_close(sims, want_sims, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v2t, want_v2t, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t2v, want_t2v, atol=1e-4, rtol=1e-4)
    assert int((v2t != NEG_INF_SCORE).sum()) == 5 * k_test and int((t2v != NEG_INF_SCORE).sum()) == 7 * min(k_test, 5)


def test_itm_sees_every_frame_but_not_their_order(blip_tiny):
    """The ITM keys are all frames' tokens (changing one frame changes the scores), and BLIP's
    protocol has no time embedding: reversing the frames changes nothing."""
    torch.manual_seed(2)
    videos = torch.randn(4, 3, 3, 32, 32)
    kw = dict(k_test=4, itm_batch_size=16)
    base = video_retrieval_scores(blip_tiny, videos, TEXTS, **kw)
    rev = video_retrieval_scores(blip_tiny, videos.flip(1), TEXTS, **kw)
    for a, b in zip(base, rev):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    changed = videos.clone()
    changed[:, 2] = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(video_retrieval_scores(blip_tiny, changed, TEXTS, **kw)[0], base[0], atol=1e-4)


def test_albef_runs_the_same_path_with_itm_only_scores():
    torch.manual_seed(0)
    model = create_model("albef_tiny", "retriever").eval()
    torch.manual_seed(3)
    videos = torch.randn(4, 2, 3, 32, 32)
    tok = bert_tokenizer()
    k = 3
    with torch.no_grad():
        v2t, t2v, sims = video_retrieval_scores(model, videos, TEXTS, tokenizer=tok, k_test=k)
        enc = encode_videos(model, videos)
        t = tok(TEXTS, padding="max_length", truncation=True, max_length=30, return_tensors="pt")
        states = model.encode_text(t.input_ids, t.attention_mask)
        for i in range(4):
            idx = sims[i].topk(k).indices
            itm = model.itm_logits(enc.frame_embeds[i : i + 1], states[idx], t.attention_mask[idx])[:, 1]
            torch.testing.assert_close(v2t[i, idx], itm, atol=1e-4, rtol=1e-4)
    assert enc.frame_embeds.shape == (4, 2 * 5, 32)  # 2 frames x (4 patches + [CLS]), concatenated


def test_offloaded_frame_embeddings_give_the_same_scores(blip_tiny):
    torch.manual_seed(4)
    videos = torch.randn(3, 2, 3, 32, 32)
    on = video_retrieval_scores(blip_tiny, videos, TEXTS, k_test=3)
    off_enc = encode_videos(blip_tiny, videos, offload=True)
    assert off_enc.frame_embeds.device.type == "cpu"
    off = video_retrieval_scores(blip_tiny, off_enc, TEXTS, k_test=3)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- metrics


def _official_itm_eval(scores_v2t, scores_t2v, txt2vmg, vid2txt):
    """salesforce/BLIP eval_retrieval_video.py ``itm_eval``."""
    ranks = np.zeros(scores_v2t.shape[0])
    for index, score in enumerate(scores_v2t):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == vid2txt[index])[0][0]
    tr1, tr5, tr10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    ranks = np.zeros(scores_t2v.shape[0])
    for index, score in enumerate(scores_t2v):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == txt2vmg[index])[0][0]
    mdR = np.median(ranks + 1)
    vr1, vr5, vr10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    tr_mean, vr_mean = (tr1 + tr5 + tr10) / 3, (vr1 + vr5 + vr10) / 3
    return {"txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean, "vid_r1": vr1, "vid_r5": vr5,
            "vid_r10": vr10, "vid_r_mean": vr_mean, "vid_mdR": mdR, "r_mean": (tr_mean + vr_mean) / 2}  # fmt: skip


def test_metrics_on_a_hand_computed_matrix():
    # 4 videos, one caption each. Text -> video: text 0's video first (rank 1), text 1's second,
    # text 2's fourth, text 3's first.
    t2v = torch.tensor([[0.9, 0.1, 0.2, 0.3],
                        [0.8, 0.5, 0.1, 0.0],
                        [0.9, 0.8, 0.1, 0.7],
                        [0.0, 0.1, 0.2, 0.6]])  # fmt: skip
    v2t = t2v.t().contiguous()
    m = video_retrieval_metrics(v2t, t2v, [0, 1, 2, 3])
    assert (m["vid_r1"], m["vid_r5"], m["vid_r10"]) == (50.0, 100.0, 100.0)
    assert m["vid_mdR"] == 1.5 and m["vid_mnR"] == 2.0  # ranks 1, 2, 4, 1: median of an even count is the mean of 2 and 1
    # Video -> text (the columns): video 0 [0.9, 0.8, 0.9, 0.0]: its text ties text 2 -> rank 2 (a tie
    # counts against the model); video 1 [0.1, 0.5, 0.8, 0.1] -> 2; video 2 [0.2, 0.1, 0.1, 0.2]: two
    # higher, one tie -> 4; video 3 [0.3, 0.0, 0.7, 0.6] -> 2.
    assert (m["txt_r1"], m["txt_r5"]) == (0.0, 100.0) and (m["txt_mdR"], m["txt_mnR"]) == (2.0, 2.5)
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["vid_r_mean"]) / 2)


def test_metrics_match_the_official_itm_eval_without_ties():
    torch.manual_seed(0)
    for n in (1, 7, 30):
        v2t, t2v = torch.rand(n, n), torch.rand(n, n)
        ours = video_retrieval_metrics(v2t, t2v, list(range(n)))
        official = _official_itm_eval(v2t.numpy(), t2v.numpy(), list(range(n)), list(range(n)))
        for k, v in official.items():
            assert ours[k] == pytest.approx(v), k


# ---------------------------------------------------------------- videos on disk, degenerate cases


def _colour(i):
    return (10 * i % 256, 255 - 10 * i % 256, 40)


def _frame_folder(root, name, n, size=8):
    d = root / name
    d.mkdir(parents=True)
    for i in range(n):  # 1.png ... 10.png: natural order, not 1, 10, 2
        Image.new("RGB", (size, size), _colour(i)).save(d / f"{i + 1}.png")
    return d


@pytest.mark.parametrize("n_files, num_frames, expected", [(10, 4, [0, 2, 4, 6]), (5, 8, [0, 0, 1, 1, 2, 3, 3, 4])])
def test_a_folder_of_frames_is_sampled_in_natural_order(tmp_path, n_files, num_frames, expected):
    d = _frame_folder(tmp_path, "clip", n_files)
    frames = read_video(d, num_frames)
    assert [f.getpixel((0, 0)) for f in frames] == [_colour(i) for i in expected]


def test_video_dataset_reads_annotations_frames_and_skips(tmp_path):
    _frame_folder(tmp_path, "a", 6)
    _frame_folder(tmp_path, "video7020", 3)  # the official clip_name field, as a frame folder
    (tmp_path / "empty").mkdir()
    ann = tmp_path / "test.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in [
        {"video": "a", "caption": ["A man is Cooking!", "someone cooks"]},
        {"clip_name": "video7020", "caption": "a cat"},
        {"video": "empty", "caption": "nothing"},
        {"video": "a", "caption": 3},  # bad record
        {"caption": "no video"},  # bad record
    ]) + "\n")  # fmt: skip
    ds = VideoTextDataset(ann, tmp_path, num_frames=4, transform=eval_transform(16))
    assert ds.texts == ["a man is cooking", "someone cooks", "a cat", "nothing"]  # pre_caption
    assert ds.txt2video == [0, 0, 1, 2] and ds.video2txt == [[0, 1], [2], [3]]
    s = ds[0]
    assert s["video"].shape == (4, 3, 16, 16) and s["caption"] == "a man is cooking"
    assert ds[1]["video"].shape == (4, 3, 16, 16)  # 3 frames -> 4
    assert not isinstance(ds[2], dict) and ds[2].reason == "corrupt"  # a folder without frames
    assert len(ds) == 5 and [x.reason for x in ds.skipped] == ["bad_record", "bad_record"]


def test_video_files_without_pyav_fail_with_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(b"\0" * 16)
    (tmp_path / "ann.json").write_text(json.dumps([{"video": "v.mp4", "caption": "a dog"}]))
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(ImportError, match="pip install av"):
        VideoTextDataset(tmp_path / "ann.json", tmp_path)


def test_video_file_round_trip_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    frames = read_video(path, 4)  # 12 frames -> 0, 3, 6, 9
    assert [f.getpixel((16, 16))[0] // 20 for f in frames] == pytest.approx([0, 3, 6, 9], abs=1)


def test_one_video_and_more_candidates_than_videos(blip_tiny):
    video = torch.randn(1, 2, 3, 32, 32)
    m = eval_video_retrieval(blip_tiny, video, ["a red circle"], [0], k_test=128)
    assert m["vid_r1"] == m["txt_r1"] == 100.0 and m["vid_mdR"] == m["txt_mnR"] == 1.0
    with pytest.raises(ValueError, match="videos"):
        eval_video_retrieval(blip_tiny, video, ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=r"\[B, F, 3, S, S\]"):
        encode_videos(blip_tiny, torch.randn(2, 3, 32, 32))
    assert isinstance(encode_videos(blip_tiny, [{"video": torch.empty(0), "index": torch.empty(0, dtype=torch.long)},
                                                 {"video": video, "index": torch.tensor([4])}]), EncodedVideos)


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny") / "model"
    create_model("blip_tiny", "retriever").save_pretrained(d)
    return d


def _run_cli(args, capsys):
    from blipx.cli import main

    assert main(["eval", "video-retrieval", *args, "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_prints_the_metrics_on_shapes_video(saved_tiny, capsys):
    out = _run_cli(["--model", str(saved_tiny), "--num-samples", "6", "--num-frames", "4", "--k-test", "4"], capsys)
    assert out["videos"] == out["texts"] == 6 and out["num_frames"] == 4
    for key in ("txt_r1", "txt_r5", "txt_r10", "vid_r1", "vid_r5", "vid_r10", "vid_mdR", "vid_mnR", "txt_mdR", "r_mean"):
        assert key in out["metrics"]
    assert 0 < out["chance"]["vid_r1"] <= 100.0


def test_cli_on_an_annotation_file_of_frame_folders_and_a_config(saved_tiny, tmp_path, capsys):
    from blipx.data.shapes_video import ShapesVideoDataset

    ann = ShapesVideoDataset("val", num_samples=4, image_size=32, num_video_frames=5).export(tmp_path / "vids")
    with open(ann, "a") as f:
        f.write(json.dumps({"video": "val/missing", "caption": "a lost video"}) + "\n")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {saved_tiny}\ndata: {ann}\nnum_frames: 3\nk_test: 2\nworkers: 0\n")
    out = _run_cli(["--config", str(cfg), "--k-test", "3"], capsys)  # the command line overrides the file
    assert out["videos"] == 4 and out["texts"] == 4 and out["skipped"] == {"missing": 1}
    assert out["metrics"]["vid_r1"] >= 0.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nframes: 8\n")
    with pytest.raises(SystemExit):
        from blipx.cli import main

        main(["eval", "video-retrieval", "--config", str(bad)])
    assert "unknown setting" in capsys.readouterr().err
