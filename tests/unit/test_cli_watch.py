"""``status --watch`` redraws one screen region on a terminal, prints whole snapshots elsewhere,
keeps going while the router is away, and ends quietly on Ctrl-C. No router, no terminal: the
loop gets a fake fetch, a StringIO and a fake clock."""

from __future__ import annotations

import io

import pytest

from switchboard import watch


class Clock:
    """Time that moves only when the loop sleeps (or an answer is slow)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def answers(*results: tuple[bool, str]) -> watch.Fetch:
    queue = list(results)
    return lambda: queue.pop(0)


def run(fetch: watch.Fetch, *, tty: bool, count: int | None, rows: int | None = None,
        clock: Clock | None = None) -> tuple[int, str]:
    out = io.StringIO()
    clock = clock or Clock()
    status = watch.run(fetch, out, title=lambda: "TITLE", interval=2.0, count=count, tty=tty,
                       rows=lambda: rows, sleep=clock.sleep, clock=clock)
    return status, out.getvalue()


def test_on_a_terminal_every_frame_starts_at_home_and_clears_what_it_does_not_cover() -> None:
    status, text = run(answers((True, "a\nb\nc"), (True, "d")), tty=True, count=2)
    frames = text.split(watch.HOME)[1:]
    assert status == 0 and len(frames) == 2
    assert frames[0] == f"TITLE\x1b[K\n\x1b[K\na\x1b[K\nb\x1b[K\nc\x1b[K\n{watch.CLEAR_DOWN}"
    # the shorter second frame clears the old rows below it instead of leaving them
    assert frames[1].endswith(f"d{watch.CLEAR_LINE}\n{watch.CLEAR_DOWN}")


def test_elsewhere_snapshots_are_printed_whole_without_escape_codes() -> None:
    status, text = run(answers((True, "a\nb"), (True, "c")), tty=False, count=2)
    assert status == 0 and "\x1b" not in text
    assert text == "TITLE\n\na\nb\n\nTITLE\n\nc\n\n"


def test_an_unreachable_router_is_one_line_and_the_next_refresh_tries_again() -> None:
    down = "router unreachable: cannot reach the router; retrying every 2s"
    status, text = run(answers((False, down), (True, "table")), tty=False, count=2)
    first, second = text.split("TITLE\n\n")[1:]
    assert first == down + "\n\n" and second == "table\n\n"
    assert status == 0  # the last refresh had an answer


def test_with_count_the_status_says_whether_the_last_refresh_had_an_answer() -> None:
    status, _ = run(answers((True, "table"), (False, "down")), tty=False, count=2)
    assert status == 1


def test_refreshes_keep_to_the_interval_and_a_slow_answer_does_not_cause_a_burst() -> None:
    clock = Clock()

    def slow() -> tuple[bool, str]:
        clock.now += 0.5 if len(clock.sleeps) != 1 else 5.0  # the second answer takes 5 s
        return True, "t"

    run(slow, tty=False, count=4, clock=clock)
    assert clock.sleeps == [1.5, 0.0, 1.5]


def test_ctrl_c_ends_the_watch_with_status_0() -> None:
    def interrupted() -> tuple[bool, str]:
        raise KeyboardInterrupt

    assert run(interrupted, tty=True, count=None)[0] == 0

    clock = Clock()

    def sleep(_: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert watch.run(answers((False, "down")), out, title=lambda: "T", interval=1.0,
                     sleep=sleep, clock=clock) == 0
    assert out.getvalue() == "T\n\ndown\n\n"


@pytest.mark.parametrize(("rows", "kept"), [(24, 12), (8, 7), (3, 12)])
def test_a_frame_taller_than_the_terminal_is_cut_so_the_next_one_still_overwrites_it(
    rows: int, kept: int
) -> None:
    body = "\n".join(f"row{i}" for i in range(10))
    lines = watch.frame("TITLE", body, tty=True, rows=rows).split("\n")[:-1]
    assert len(lines) == kept  # at most rows - 1, so the last newline does not scroll
    if kept < 12:
        assert lines[-1].startswith("... ") and "more lines" in lines[-1]
