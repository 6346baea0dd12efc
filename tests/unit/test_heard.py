from sipagent.conversation.heard import SpokenChunk, first_unheard_chunk, heard_text

CHUNKS = [
    SpokenChunk("Sure, I can book that.", 1500.0),
    SpokenChunk("What day and time work best for you?", 2000.0),
]


def test_everything_played_is_everything_heard():
    assert (
        heard_text(CHUNKS, 3500.0) == "Sure, I can book that. What day and time work best for you?"
    )


def test_cut_inside_the_second_chunk_keeps_the_words_spoken_so_far():
    assert heard_text(CHUNKS, 1500.0 + 1000.0) == "Sure, I can book that. What day and time"


def test_cut_inside_the_first_chunk():
    assert heard_text(CHUNKS, 750.0) == "Sure, I"


def test_nothing_played_nothing_heard():
    assert heard_text(CHUNKS, 0.0) == ""
    assert heard_text([SpokenChunk("Not synthesised yet.")], 500.0) == ""


def test_the_first_unheard_chunk_is_where_saying_it_again_starts():
    assert first_unheard_chunk(CHUNKS, 0.0) == 0
    assert first_unheard_chunk(CHUNKS, 1499.0) == 0
    assert first_unheard_chunk(CHUNKS, 1500.0 + 1000.0) == 1
    assert first_unheard_chunk(CHUNKS, 3500.0) is None
