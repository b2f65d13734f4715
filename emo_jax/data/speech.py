"""English speech from espeak-ng (the `espeakng-loader` wheel, through ctypes), with the start
time of every phoneme.

    utt = speak("Hello there.", Voice("en-us+f3", rate=160, pitch=60))
    utt.wave, utt.sample_rate      # float32 mono in [-1, 1] at espeak's rate (22,050 Hz)
    utt.phonemes                   # ((name, start seconds), ...), e.g. ("h", 0.012), ("'@", 0.07)

Phoneme names are espeak's mnemonics, stress marks (' primary, , secondary) included; "_" names
are pauses. The library keeps state from one utterance to the next (pitch flutter, waveform
phase), so every call loads it afresh and unloads it after (about a millisecond): the same text
and voice give the same samples whatever was spoken before. Calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 1
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4  # espeak_PARAMETER
CHARS_UTF8 = 1
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
VARIANTS = {"female": ("f1", "f2", "f3", "f4", "f5"), "male": tuple(f"m{i}" for i in range(1, 8))}


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples from the start of the text
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union; a phoneme event holds its name
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclasses.dataclass(frozen=True)
class Voice:
    """An espeak voice: `name` is "<language>[+<variant>]"; rate in words per minute (80-450),
    pitch and pitch range 0-100 (50 is the voice's normal)."""

    name: str = "en-us"
    rate: int = 175
    pitch: int = 50
    range: int = 50


@dataclasses.dataclass(frozen=True)
class Utterance:
    """Spoken text: the waveform and each phoneme's (name, start in seconds)."""

    wave: np.ndarray
    sample_rate: int
    phonemes: tuple[tuple[str, float], ...]


class _Engine:
    """The library loaded for one utterance (a context manager: unloaded on exit), its
    synthesis callback and the buffers it fills."""

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
        self.lib.espeak_Initialize.argtypes += [ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]
        self.lib.espeak_Synth.argtypes += [ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
        self.lib.espeak_Synth.argtypes += [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        data = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data, INITIALIZE_PHONEME_EVENTS
        )
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data: {data.decode()})")
        self.sample_rate = rate
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_ng_SetRandSeed(0)  # else seeded from the clock (breathy voices: noise)
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []
        self.callback = _Callback(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                self.events.append((events[i].id.decode("ascii", "replace"), events[i].sample))
            i += 1
        return 0

    def __enter__(self) -> _Engine:
        return self

    def __exit__(self, *exc) -> None:
        import _ctypes

        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)

    def speak(self, text: str, voice: Voice) -> Utterance:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.name!r}")
        for param, value in ((RATE, voice.rate), (PITCH, voice.pitch), (RANGE, voice.range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak-ng failed to speak {text!r}")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        phonemes = tuple((name, sample / self.sample_rate) for name, sample in self.events)
        return Utterance(samples.astype(np.float32) / 32768, self.sample_rate, phonemes)


_LOCK = threading.Lock()


def speak(text: str, voice: Voice = Voice()) -> Utterance:
    """`text` spoken by espeak-ng in `voice` (the same arguments, the same utterance)."""
    with _LOCK, _Engine() as engine:
        return engine.speak(text, voice)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (exact rational factor) to `target` Hz, float32."""
    from math import gcd

    from scipy.signal import resample_poly

    if rate == target:
        return wave.astype(np.float32)
    g = gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def voice_for(rng: np.random.Generator, female: bool, f0: float, rate: float) -> Voice:
    """A voice for a person: accent and variant from `rng`; espeak pitch from the voice pitch
    f0 (Hz; female 170-250, male 90-140); words per minute from the speaking-rate factor."""
    accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
    variants = VARIANTS["female" if female else "male"]
    variant = variants[int(rng.integers(len(variants)))]
    lo, hi = (170.0, 250.0) if female else (90.0, 140.0)
    pitch = 30 + 40 * np.clip((f0 - lo) / (hi - lo), 0, 1)
    return Voice(
        f"{accent}+{variant}",
        rate=int(round(160 * rate)),
        pitch=int(round(pitch)),
        range=int(rng.integers(30, 80)),
    )
