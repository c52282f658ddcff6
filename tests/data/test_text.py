import pytest

from blipx.data import pre_caption


@pytest.mark.parametrize(
    "raw, max_words, expected",
    [
        ("A man, riding a horse!!", 50, "a man, riding a horse"),  # ',' survives in BLIP
        ("Hello.World", 50, "hello world"),  # replaced by a space
        ("It's (very) cool ~ #tag?", 50, "it's very cool tag?"),  # "'" and '?' survive
        ("  multiple   spaces\there  ", 50, "multiple spaces\there"),  # single tab is not squeezed
        ("a dog\n", 50, "a dog"),
        ("one two three four", 2, "one two"),
        ("one two", 2, "one two"),
        ("a well-known dog/cat", 50, "a well-known dog/cat"),
    ],
)
def test_pre_caption_blip(raw, max_words, expected):
    assert pre_caption(raw, max_words) == expected


@pytest.mark.parametrize(
    "raw, max_words, expected",
    [
        ("A man, riding a horse!!", 30, "a man riding a horse"),  # deleted, not replaced
        ("Hello.World", 30, "helloworld"),
        ("It's a well-known <person> and/or dog.", 30, "its a well known person and or dog"),
        ("What?  Why!", 30, "what why"),
        ("a b c d e", 3, "a b c"),
    ],
)
def test_pre_caption_albef(raw, max_words, expected):
    assert pre_caption(raw, max_words, style="albef") == expected


def test_pre_caption_rejects_unknown_style():
    with pytest.raises(ValueError):
        pre_caption("x", style="clip")
