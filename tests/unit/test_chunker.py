import pytest

from sipagent.conversation.chunker import SentenceChunker


def run(deltas: list[str], min_chars: int = 20) -> list[str]:
    chunker = SentenceChunker(min_chars=min_chars)
    chunks = [chunk for delta in deltas for chunk in chunker.feed(delta)]
    return chunks + chunker.flush()


def tokens(text: str) -> list[str]:
    """Split like an LLM stream: words with their leading space, and punctuation apart."""
    return [piece for piece in text.replace(".", "|.|").replace("?", "|?|").split("|") if piece]


def test_cuts_at_sentence_ends_as_the_stream_arrives():
    chunker = SentenceChunker(min_chars=10)
    assert chunker.feed("Sure, I can help with that") == []
    assert chunker.feed(".") == []  # the end is only certain once the next word shows
    assert chunker.feed(" What day") == ["Sure, I can help with that."]
    assert chunker.feed(" works for you?") == []
    assert chunker.flush() == ["What day works for you?"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Patel can see you on Tuesday. Does that work?",
            ["Dr. Patel can see you on Tuesday.", "Does that work?"],
        ),
        (
            "Your cleaning is at 3.30 p.m. on Friday. See you then!",
            ["Your cleaning is at 3.30 p.m. on Friday.", "See you then!"],
        ),
        (
            "I have your number as 555.123.4567 and that is all. Thanks!",
            ["I have your number as 555.123.4567 and that is all.", "Thanks!"],
        ),
        (
            "We open at 9 a.m. tomorrow and close at 5 p.m. Shall I book it?",
            ["We open at 9 a.m. tomorrow and close at 5 p.m.", "Shall I book it?"],
        ),
        ("Okay. Great. Booked for Monday at ten.", ["Okay. Great. Booked for Monday at ten."]),
    ],
)
def test_never_splits_abbreviations_times_or_numbers(text, expected):
    assert run(tokens(text)) == expected
    assert run(list(text)) == expected  # character by character: same answer


def test_short_sentences_are_merged_up_to_the_minimum():
    assert run(tokens("Hi. Yes. I can book that for you today. Bye now."), min_chars=15) == [
        "Hi. Yes. I can book that for you today.",
        "Bye now.",
    ]


def test_run_on_text_is_cut_at_a_clause():
    chunker = SentenceChunker(min_chars=10, max_chars=60)
    text = "we have cleanings, checkups, emergencies, consultations, and also whitening, and more"
    chunks = chunker.feed(text)
    assert chunks and all(len(chunk) <= 60 for chunk in chunks)
    assert " ".join(chunks + chunker.flush()) == text


def test_a_short_first_sentence_goes_at_once_later_ones_are_merged():
    chunker = SentenceChunker(min_chars=20, first_min_chars=1)
    assert chunker.feed("Sure.") == []  # the end is only certain once the next word shows
    assert chunker.feed(" What") == ["Sure."]  # not held until the next sentence is generated
    assert chunker.feed(" day? Or") == []  # later chunks keep the minimum
    assert chunker.feed(" time? Let me check that for you. Ok") == [
        "What day? Or time? Let me check that for you."
    ]
    assert chunker.flush() == ["Ok"]


def test_the_first_chunk_still_never_splits_an_abbreviation():
    chunker = SentenceChunker(min_chars=20, first_min_chars=1)
    chunks = [
        c
        for t in tokens("Dr. Patel is in. Mr. Smith is not. Sorry about that.")
        for c in chunker.feed(t)
    ]
    assert chunks + chunker.flush() == ["Dr. Patel is in.", "Mr. Smith is not. Sorry about that."]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        (
            "At 10 a.m. Tuesday works for you, or Wednesday?",
            "At 10 a.m. Tuesday works for you, or Wednesday?",
        ),
        ("The U.S. Dental Board says so. Anything else?", "The U.S. Dental Board says so."),
        ("J. Smith is booked. Anything else?", "J. Smith is booked."),
        ("Suite 4. Go to the second floor. Thanks.", "Suite 4. Go to the second floor."),
        ("... Let me check that for you. One moment.", "... Let me check that for you."),
        ("Okay. Let me check that for you now. One moment.", "Okay."),
    ],
)
def test_a_short_first_chunk_ends_only_where_the_end_is_unambiguous(text, first):
    chunker = SentenceChunker(min_chars=20, first_min_chars=1)
    chunks = [c for t in tokens(text) for c in chunker.feed(t)] + chunker.flush()
    assert chunks[0] == first
    assert " ".join(chunks) == text  # nothing lost or reordered
