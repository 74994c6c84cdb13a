"""Audio the project synthesises itself with numpy (8 kHz mono float32), seeded and exact.

Sound kinds: harmonic **tones** in four timbres, **chirps** (exponential glides), vowel-like
**syllables** (a harmonic source with a pitch contour through two formant resonances, sometimes
with a noisy onset), band-limited **noise bursts**, **rhythms** (an 8-step on/off pattern of
percussive hits, bars repeated) and **melodies** (note sequences in one timbre and tempo). Every
generator returns ``(audio, meta)``; ``meta`` holds the latent values (kind, pitches, timbre,
pattern, step length, ...) the captions and the few-shot metrics use.

Durations of rhythmic material are whole 25 Hz frames (320 samples), so a rhythm step lasts
3 to 6 frames and a bar of 8 steps 0.96 to 1.92 s.

Example::

    rng = np.random.default_rng(0)
    audio, meta = melody(rng, notes=[60, 64, 67], step_frames=4, timbre="hollow")
    random_clip(rng)                          # any kind, random parameters
"""

from __future__ import annotations

import numpy as np

SR = 8000
FRAME = 320  # samples per 25 Hz frame
TIMBRES = ("pure", "hollow", "bright", "nasal")
VOWELS = {"a": (800, 1200), "e": (500, 1900), "i": (300, 2300), "o": (500, 900), "u": (320, 800)}
KINDS = ("tone", "chirp", "syllable", "noise", "rhythm", "melody")


def midi_to_hz(m) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def harmonic_amps(timbre: str, f0: float) -> np.ndarray:
    """Amplitudes of harmonics 1..n below 3.8 kHz for ``timbre``."""
    n = np.arange(1, max(1, int(3800 // max(f0, 1.0))) + 1)
    if timbre == "pure":
        a = np.where(n == 1, 1.0, np.where(n == 2, 0.08, 0.0))
    elif timbre == "hollow":  # odd harmonics, 1/n (clarinet-like)
        a = np.where(n % 2 == 1, 1.0 / n, 0.0)
    elif timbre == "bright":  # every harmonic, 1/n (sawtooth-like)
        a = 1.0 / n
    elif timbre == "nasal":  # a resonance near 1.3 kHz over a steep roll-off
        a = 0.6 / n ** 1.5 + np.exp(-0.5 * ((n * f0 - 1300.0) / 250.0) ** 2)
    else:
        raise ValueError(f"timbre: expected one of {TIMBRES}, got {timbre!r}")
    return a / np.sqrt((a ** 2).sum())


def _harmonic(f0_curve: np.ndarray, amps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(f0_curve) / SR
    out = np.zeros_like(phase)
    nyquist_ok = np.max(f0_curve)
    for k, a in enumerate(amps, start=1):
        if a == 0 or k * nyquist_ok >= SR / 2 - 100:
            continue
        out += a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def envelope(n: int, attack: float = 0.01, release: float = 0.05, decay: float | None = None) -> np.ndarray:
    """Linear attack and release (seconds); with ``decay`` an exponential decay (time constant, s)."""
    t = np.arange(n) / SR
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.minimum(1.0, (n / SR - t) / max(release, 1e-4))
    if decay is not None:
        env *= np.exp(-t / decay)
    return np.clip(env, 0.0, 1.0)


def _norm(x: np.ndarray, peak: float) -> np.ndarray:
    m = np.abs(x).max()
    return (x * (peak / m) if m > 0 else x).astype(np.float32)


def _gain(rng) -> float:
    return float(rng.uniform(0.4, 0.8))


def tone(rng, *, midi: float | None = None, dur: float | None = None, timbre: str | None = None):
    midi = float(rng.uniform(50, 82)) if midi is None else float(midi)
    dur = float(rng.uniform(0.25, 0.8)) if dur is None else dur
    timbre = timbre or str(rng.choice(TIMBRES))
    n = int(dur * SR)
    f0 = float(midi_to_hz(midi))
    x = _harmonic(np.full(n, f0), harmonic_amps(timbre, f0), rng) * envelope(n, 0.01, 0.06)
    return _norm(x, _gain(rng)), {"kind": "tone", "midi": midi, "timbre": timbre, "dur": dur}


def chirp(rng, *, start: float | None = None, end: float | None = None, dur: float | None = None, timbre: str | None = None):
    start = float(rng.uniform(50, 82)) if start is None else start
    if end is None:
        end = start + float(rng.choice([-1, 1]) * rng.uniform(7, 19))
    end = float(np.clip(end, 40, 92))
    dur = float(rng.uniform(0.3, 0.8)) if dur is None else dur
    timbre = timbre or str(rng.choice(("pure", "pure", "hollow")))
    n = int(dur * SR)
    curve = midi_to_hz(np.linspace(start, end, n))
    x = _harmonic(curve, harmonic_amps(timbre, float(curve.max())), rng) * envelope(n, 0.01, 0.05)
    return _norm(x, _gain(rng)), {"kind": "chirp", "start": start, "end": end, "up": end > start, "dur": dur, "timbre": timbre}


def _formant_amps(f0: float, formants, width: float = 120.0) -> np.ndarray:
    n = np.arange(1, int(3800 // f0) + 1)
    f = n * f0
    a = sum(np.exp(-0.5 * ((f - F) / (width + 0.1 * F)) ** 2) for F in formants) + 0.05 / n
    return a / np.sqrt((a ** 2).sum())


def syllable(rng, *, vowel: str | None = None, midi: float | None = None, contour: str | None = None, dur: float | None = None):
    vowel = vowel or str(rng.choice(list(VOWELS)))
    midi = float(rng.uniform(45, 62)) if midi is None else midi
    contour = contour or str(rng.choice(("rising", "falling", "flat")))
    dur = float(rng.uniform(0.25, 0.6)) if dur is None else dur
    n = int(dur * SR)
    span = {"rising": 4.0, "falling": -4.0, "flat": 0.0}[contour]
    curve = midi_to_hz(midi + np.linspace(0, span, n) + 0.3 * np.sin(2 * np.pi * 5.5 * np.arange(n) / SR))
    x = _harmonic(curve, _formant_amps(float(curve.mean()), VOWELS[vowel]), rng) * envelope(n, 0.03, 0.06)
    if rng.random() < 0.5:  # a noisy consonant onset
        m = int(0.05 * SR)
        x = np.concatenate([_band_noise(rng, m, 2500.0, 1500.0) * 0.4 * envelope(m, 0.005, 0.02), x])
    return _norm(x, _gain(rng)), {"kind": "syllable", "vowel": vowel, "midi": midi, "contour": contour, "dur": len(x) / SR}


def _band_noise(rng, n: int, center: float, bandwidth: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec *= np.exp(-0.5 * ((f - center) / max(bandwidth / 2, 50.0)) ** 2)
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def noise_burst(rng, *, center: float | None = None, bandwidth: float | None = None, dur: float | None = None):
    center = float(rng.uniform(300, 3200)) if center is None else center
    bandwidth = float(rng.uniform(200, 1500)) if bandwidth is None else bandwidth
    dur = float(rng.uniform(0.15, 0.6)) if dur is None else dur
    n = int(dur * SR)
    x = _band_noise(rng, n, center, bandwidth) * envelope(n, 0.005, 0.03, decay=dur / 2.5)
    band = "low" if center < 1000 else ("mid" if center < 2200 else "high")
    return _norm(x, _gain(rng)), {"kind": "noise", "center": center, "band": band, "dur": dur}


def hit(rng, sound: dict, n: int) -> np.ndarray:
    """One percussive hit of ``n`` samples: ``sound`` = {"type": "drum"|"click", "midi" | "center"}."""
    if sound["type"] == "drum":
        f0 = float(midi_to_hz(sound["midi"]))
        body = _harmonic(f0 * (1 + 0.5 * np.exp(-np.arange(n) / (0.02 * SR))), harmonic_amps("pure", f0), rng)
        return body * envelope(n, 0.002, 0.01, decay=0.07)
    return _band_noise(rng, n, sound["center"], 900.0) * envelope(n, 0.002, 0.01, decay=0.04)


def random_hit_sound(rng) -> dict:
    if rng.random() < 0.5:
        return {"type": "drum", "midi": float(rng.uniform(40, 70))}
    return {"type": "click", "center": float(rng.uniform(1200, 3200))}


def random_pattern(rng, steps: int = 8) -> tuple[int, ...]:
    """An on/off pattern with the first step on and 3..6 hits."""
    while True:
        p = (1,) + tuple(int(b) for b in rng.random(steps - 1) < 0.5)
        if 3 <= sum(p) <= 6:
            return p


def rhythm(rng, *, pattern=None, step_frames: int | None = None, sound: dict | None = None, bars: int = 1,
           transpose=None):
    """``bars`` repetitions of an 8-step ``pattern``; ``transpose[b]`` semitones for drum bar ``b``."""
    pattern = tuple(pattern) if pattern is not None else random_pattern(rng)
    step_frames = int(rng.integers(3, 7)) if step_frames is None else step_frames
    sound = sound or random_hit_sound(rng)
    step = step_frames * FRAME
    out = np.zeros(step * len(pattern) * bars)
    for b in range(bars):
        s = dict(sound)
        if transpose is not None and s["type"] == "drum":
            s["midi"] = sound["midi"] + transpose[b]
        for i, on in enumerate(pattern):
            if on:
                start = (b * len(pattern) + i) * step
                out[start:start + step] += hit(rng, s, step)
    meta = {"kind": "rhythm", "pattern": pattern, "step_frames": step_frames, "sound": sound, "bars": bars}
    return _norm(out, _gain(rng)), meta


def random_melody_notes(rng, n: int | None = None, low: int = 52, high: int = 76) -> list[int]:
    n = int(rng.integers(3, 7)) if n is None else n
    start = int(rng.integers(low + 4, high - 4))
    notes = [start]
    for _ in range(n - 1):
        notes.append(int(np.clip(notes[-1] + rng.choice([-5, -3, -2, -1, 1, 2, 3, 4, 5, 7]), low, high)))
    return notes


def melody(rng, *, notes=None, step_frames: int | None = None, timbre: str | None = None):
    """Notes (MIDI numbers) of ``step_frames`` frames each, legato with short gaps."""
    notes = list(notes) if notes is not None else random_melody_notes(rng)
    step_frames = int(rng.integers(3, 7)) if step_frames is None else step_frames
    timbre = timbre or str(rng.choice(TIMBRES))
    step = step_frames * FRAME
    parts = []
    for m in notes:
        f0 = float(midi_to_hz(m))
        parts.append(_harmonic(np.full(step, f0), harmonic_amps(timbre, f0), rng) * envelope(step, 0.01, 0.03))
    shape = "rising" if notes[-1] > notes[0] else ("falling" if notes[-1] < notes[0] else "level")
    meta = {"kind": "melody", "notes": notes, "step_frames": step_frames, "timbre": timbre, "shape": shape}
    return _norm(np.concatenate(parts), _gain(rng)), meta


GENERATORS = {"tone": tone, "chirp": chirp, "syllable": syllable, "noise": noise_burst,
              "rhythm": lambda rng, **kw: rhythm(rng, bars=int(rng.integers(1, 3)), **kw), "melody": melody}


def random_clip(rng, kind: str | None = None):
    """A clip of ``kind`` (random when None) with random parameters."""
    kind = kind or str(rng.choice(KINDS))
    if kind not in GENERATORS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return GENERATORS[kind](rng)


def describe(meta: dict) -> str:
    """A short English caption of a clip from its latent values."""
    k = meta["kind"]
    if k == "tone":
        reg = "low" if meta["midi"] < 60 else ("mid" if meta["midi"] < 72 else "high")
        return f"a {reg} {meta['timbre']} tone"
    if k == "chirp":
        return f"a chirp going {'up' if meta['up'] else 'down'}"
    if k == "syllable":
        return f"a voice saying {meta['vowel']}, {meta['contour']}"
    if k == "noise":
        return f"a {meta['band']} noise burst"
    if k == "rhythm":
        return "a beat " + "".join("x" if b else "." for b in meta["pattern"])
    if k == "melody":
        return f"{len(meta['notes'])} {meta['timbre']} notes {meta['shape']}"
    raise ValueError(f"meta.kind: expected one of {KINDS}, got {k!r}")


def silence(frames: int) -> np.ndarray:
    return np.zeros(frames * FRAME, dtype=np.float32)
