"""What the Whisper provider does to audio before and text after the model."""

from __future__ import annotations

import numpy as np
import pytest

from sipagent.providers.whisper_stt import spoken_times, upsample_to_16k


@pytest.mark.parametrize(
    ("heard", "passed_on"),
    [
        ("The 15th of March at 1030.", "The 15th of March at 10:30."),
        ("How about 1145?", "How about 11:45?"),
        ("at 330 pm", "at 3:30 pm"),
        # Phone numbers and other digit runs are left alone.
        ("Call me back at 415 822 9107.", "Call me back at 415 822 9107."),
        ("at 415-822-9107", "at 415-822-9107"),
        ("at 1075", "at 1075"),  # not a time: 75 minutes
        ("My number is 5550123.", "My number is 5550123."),
        ("Mm-hmm.", "mhm"),  # the conversation's backchannel list spells it so
        ("Mmhmm", "mhm"),
        ("Mm-hmm, that works.", "Mm-hmm, that works."),
    ],
)
def test_whisper_spellings_become_the_agents(heard, passed_on):
    assert spoken_times(heard) == passed_on


def test_upsampling_doubles_the_rate_and_keeps_the_tone():
    rate, hz = 8000, 1000
    t = np.arange(rate) / rate
    pcm = (np.sin(2 * np.pi * hz * t) * 16000).astype("<i2").tobytes()
    out = upsample_to_16k(pcm)
    assert out.dtype == np.float32 and out.size == 2 * rate
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == hz  # 1 Hz bins over one second at 16 kHz
    assert spectrum[4000:].max() < 1e-3 * spectrum.max()  # nothing imaged above 4 kHz
    assert abs(np.abs(out).max() - 16000 / 32768) < 0.01
