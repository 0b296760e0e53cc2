"""Stop strings matched on text across delta boundaries, with hold-back."""

from __future__ import annotations

from trtforge.proxy.stop import StopMatcher


def _run(stops: list[str], deltas: list[str]) -> tuple[str, bool, str | None]:
    matcher = StopMatcher(stops)
    out = []
    for delta in deltas:
        check = matcher.feed(delta)
        out.append(check.text)
        if check.stopped:
            return "".join(out), True, check.matched
    out.append(matcher.flush())
    return "".join(out), False, None


def test_without_stops_text_passes_through_unchanged() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc").text == "abc"
    assert matcher.flush() == ""


def test_a_stop_split_across_deltas_is_found_and_truncated() -> None:
    assert _run(["END"], ["hello E", "N", "D and more"]) == ("hello ", True, "END")


def test_held_back_text_never_shows_part_of_the_stop() -> None:
    matcher = StopMatcher(["###"])
    emitted = [matcher.feed(d).text for d in ["a#", "#"]]
    assert emitted == ["", "a"]  # "a#" held (could start "###"), then "##" held
    check = matcher.feed("#")
    assert check.stopped and check.text == ""


def test_the_earliest_of_several_stops_wins() -> None:
    assert _run(["world", "lo"], ["hello world"]) == ("hel", True, "lo")


def test_no_match_returns_all_text_after_flush() -> None:
    text, stopped, _ = _run(["<stop>"], ["one ", "two <st", "op no"])
    assert (text, stopped) == ("one two <stop no", False)


def test_after_a_stop_nothing_more_is_emitted() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.feed("axb").text == "a"
    assert matcher.feed("more").text == ""
    assert matcher.flush() == ""
