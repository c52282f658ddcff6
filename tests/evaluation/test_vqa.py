"""The VQA accuracy of the official evaluation (vqaEval.py) on hand-computed examples, and the
results file in the server's format."""

from __future__ import annotations

import json

import pytest

from blipx.evaluation.vqa import evaluate_vqa, normalize_answer, process_punctuation, vqa_accuracy, write_results


@pytest.mark.parametrize("answer, humans, expected", [
    # 10 identical humans: every 9-subset holds 9 matches -> min(1, 9/3) = 1
    ("yes", ["yes"] * 10, 1.0),
    ("no", ["yes"] * 10, 0.0),
    # 2 of 10: the 2 subsets without one of them see 1 match (1/3), the other 8 see 2 (2/3):
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    # 3 of 10: 3 subsets see 2 (2/3), 7 see 3 (1): (3 * 2/3 + 7) / 10 = 0.9
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
    # 4 or more of 10: every subset sees >= 3 -> 1
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
    # 1 of 10: 9 subsets see 1 (1/3), the one without it sees 0: 9/30 = 0.3
    ("cat", ["cat"] + ["dog"] * 9, 0.3),
    # normalisation (the humans differ): number words -> digits, the period stripped
    ("Two.", ["2"] * 2 + ["3"] * 8, 0.6),
    # articles dropped, on both sides
    ("a dog", ["the dog"] * 3 + ["cat"] * 7, 0.9),
    # contractions restored
    ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),
    # punctuation next to a space is deleted, elsewhere it becomes a space
    ("black-and-white", ["black and white"] * 4 + ["gray"] * 6, 1.0),
    # the official quirk: identical humans switch the normalisation off
    ("Yes", ["yes"] * 10, 0.0),
])
def test_vqa_accuracy_hand_computed(answer, humans, expected):
    assert vqa_accuracy(answer, humans) == pytest.approx(expected)


def test_normalisation_pieces():
    assert normalize_answer("The Two Dogs!") == "2 dogs"
    assert process_punctuation("1,000") == "1000"  # a digit,digit comma is deleted
    assert process_punctuation("3.5") == "3.5"  # a period before a digit stays
    assert normalize_answer("none") == "0"


def test_evaluate_vqa_averages_questions():
    m = evaluate_vqa(["yes", "cat", "2"], [["yes"] * 10, ["cat"] + ["dog"] * 9, ["two"] * 3 + ["3"] * 7])
    assert m["questions"] == 3
    assert m["accuracy"] == pytest.approx(100 * (1.0 + 0.3 + 0.9) / 3)
    assert m["exact_match"] == pytest.approx(100 / 3)  # only "yes" is the top human answer verbatim


def test_results_file_is_the_server_format(tmp_path):
    path = write_results(tmp_path / "vqa_result.json", [458752000, 262148000], ["yes", "2"])
    assert json.loads(path.read_text()) == [{"question_id": 458752000, "answer": "yes"},
                                            {"question_id": 262148000, "answer": "2"}]
