"""The locust SSE users' event-stream parser."""

from __future__ import annotations

from loadtest.sse import Event, SseParser

STREAM = (b"id: user:e:1\nevent: welcome\ndata: {\"type\":\"welcome\"}\n\n"
          b": ping\n\n"
          b"id: user:e:2\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n")


def test_events_come_out_whole_however_the_bytes_are_cut() -> None:
    expected = [Event("welcome", '{"type":"welcome"}', "user:e:1"),
                Event("message", '{"a":\n1}', "user:e:2")]
    assert SseParser().feed(STREAM) == expected
    parser = SseParser()
    got = []
    for i in range(len(STREAM)):
        got += parser.feed(STREAM[i:i + 1])
    assert got == expected


def test_comments_alone_make_no_event_and_default_type_is_message() -> None:
    parser = SseParser()
    assert parser.feed(b": ping\n\n") == []
    assert parser.feed(b"data: x\n\n") == [Event("message", "x", None)]
