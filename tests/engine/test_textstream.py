"""UTF-8-safe, stop-aware text from token bytes."""

from __future__ import annotations

from service.engine.textstream import TextStream


def feed_all(stream: TextStream, parts: list[bytes]) -> list[str]:
    return [stream.feed(p) for p in parts] + [stream.finish()]


def test_multibyte_character_split_over_tokens_is_emitted_whole():
    emoji = "🙂".encode()
    out = feed_all(TextStream(), [b"a", emoji[:1], emoji[1:3], emoji[3:], b"b"])
    assert out == ["a", "", "", "🙂", "b", ""]


def test_invalid_bytes_become_one_replacement_each_not_a_crash():
    assert "".join(feed_all(TextStream(), [b"\xff", b"ok"])) == "\ufffdok"


def test_character_cut_off_by_the_end_is_dropped():
    assert feed_all(TextStream(), [b"x", "日".encode()[:2]]) == ["x", "", ""]


def test_stop_string_across_tokens_is_cut_and_nothing_after_it_comes_out():
    s = TextStream(("END",))
    out = feed_all(s, [b"abc E", b"N", b"D more", b"tail"])
    assert "".join(out) == "abc "
    assert s.stopped and s.text == "abc "


def test_text_that_only_looked_like_a_stop_is_released():
    s = TextStream(("END",))
    assert feed_all(s, [b"E", b"N", b"x"]) == ["", "", "ENx", ""]
    assert not s.stopped


def test_earliest_of_several_stops_wins():
    s = TextStream(("world", "lo"))
    assert "".join(feed_all(s, [b"hello world"])) == "hel"
