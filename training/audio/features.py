"""Measurements on decoded audio (numpy, 8 kHz) that score the few-shot tasks: a frame-wise pitch
track (YIN), which steps of a beat hold a hit, and the timbre of a harmonic sound (relative
harmonic amplitudes, nearest centroid).

Example::

    f0 = pitch_track(audio)                  # Hz per 25 Hz frame, 0 where unvoiced
    hits = step_hits(audio, step_frames=4, steps=4, reference_rms=0.2)
"""

from __future__ import annotations

import numpy as np

from . import synth

HOP = synth.FRAME  # one value per 25 Hz frame
WIN = 640
MIN_F0, MAX_F0 = 90.0, 1100.0


def _frames(audio: np.ndarray, n_frames: int) -> np.ndarray:
    a = np.pad(np.asarray(audio, dtype=np.float64), (WIN // 2 - HOP // 2, WIN))  # frame i centred on 25 Hz frame i
    return np.stack([a[i * HOP: i * HOP + WIN] for i in range(n_frames)])


def pitch_track(audio: np.ndarray, *, threshold: float = 0.15, voicing_rms: float = 0.02) -> np.ndarray:
    """YIN f0 per 25 Hz frame [len(audio) // 320]; 0 where the frame is quiet or aperiodic."""
    n = len(audio) // HOP
    frames = _frames(audio, n)
    tau_min, tau_max = int(synth.SR / MAX_F0), int(synth.SR / MIN_F0)
    W = WIN - tau_max
    out = np.zeros(n)
    for i, x in enumerate(frames):
        if np.sqrt(np.mean(x[:W] ** 2)) < voicing_rms:
            continue
        d = np.array([np.sum((x[:W] - x[t:t + W]) ** 2) for t in range(tau_max + 1)])
        cmnd = d[1:] * np.arange(1, tau_max + 1) / np.maximum(np.cumsum(d[1:]), 1e-12)
        cand = np.nonzero(cmnd[tau_min - 1:] < threshold)[0]
        if len(cand) == 0:
            continue
        t = cand[0] + tau_min - 1  # index into cmnd = lag - 1
        while t + 1 < len(cmnd) and cmnd[t + 1] < cmnd[t]:  # walk down to the local minimum
            t += 1
        lag = t + 1
        if 1 <= t < len(cmnd) - 1:  # parabolic interpolation
            a, b, c = cmnd[t - 1], cmnd[t], cmnd[t + 1]
            den = a - 2 * b + c
            lag = lag + (0.5 * (a - c) / den if den > 0 else 0.0)
        out[i] = synth.SR / lag
    return out


def semitones(f: np.ndarray) -> np.ndarray:
    return 12 * np.log2(np.maximum(f, 1e-9) / 440.0) + 69


def pitch_accuracy(est: np.ndarray, ref: np.ndarray, tolerance: float = 1.0) -> float:
    """Fraction of the reference's voiced frames where the estimate is voiced and within
    ``tolerance`` semitones (tracks from ``pitch_track``); NaN when the reference has none."""
    n = min(len(est), len(ref))
    est, ref = est[:n], ref[:n]
    voiced = ref > 0
    if not voiced.any():
        return float("nan")
    ok = (est[voiced] > 0) & (np.abs(semitones(est[voiced]) - semitones(ref[voiced])) <= tolerance)
    return float(ok.mean())


def step_rms(audio: np.ndarray, step_frames: int, steps: int) -> np.ndarray:
    """RMS of the first half of each step [steps] (a hit's energy sits at its start)."""
    step = step_frames * HOP
    a = np.pad(np.asarray(audio, dtype=np.float64), (0, max(0, step * steps - len(audio))))
    return np.array([np.sqrt(np.mean(a[i * step: i * step + step // 2] ** 2)) for i in range(steps)])


def step_hits(audio: np.ndarray, step_frames: int, steps: int, reference_rms: float, ratio: float = 0.3) -> np.ndarray:
    """bool [steps]: a step holds a hit when its RMS is above ``ratio * reference_rms`` (the RMS
    of a hit step of the prompt)."""
    return step_rms(audio, step_frames, steps) > ratio * reference_rms


def harmonic_profile(audio: np.ndarray, f0: np.ndarray, n_harmonics: int = 6) -> np.ndarray | None:
    """Mean over voiced frames of the first ``n_harmonics`` harmonic magnitudes in dB relative to
    the strongest [n_harmonics]; None without voiced frames."""
    frames = _frames(audio, len(f0))
    window = np.hanning(WIN)
    freqs = np.fft.rfftfreq(WIN, 1 / synth.SR)
    rows = []
    for x, f in zip(frames, f0):
        if f <= 0:
            continue
        mag = np.abs(np.fft.rfft(x * window))
        amps = []
        for k in range(1, n_harmonics + 1):
            if k * f >= synth.SR / 2 - 50:
                amps.append(1e-6)
                continue
            band = np.abs(freqs - k * f) <= 0.5 * f / 2
            amps.append(mag[band].max() if band.any() else 1e-6)
        amps = np.array(amps)
        rows.append(20 * np.log10(amps / amps.max() + 1e-4))
    return np.mean(rows, axis=0) if rows else None


class TimbreClassifier:
    """Nearest centroid over ``harmonic_profile`` features, fitted on labelled audio."""

    def __init__(self):
        self.centroids: dict[str, np.ndarray] = {}

    def fit(self, examples: list[tuple[np.ndarray, str]]) -> "TimbreClassifier":
        feats: dict[str, list] = {}
        for audio, label in examples:
            f = harmonic_profile(audio, pitch_track(audio))
            if f is not None:
                feats.setdefault(label, []).append(f)
        self.centroids = {k: np.mean(v, axis=0) for k, v in feats.items()}
        return self

    def predict(self, audio: np.ndarray) -> str | None:
        """The nearest centroid's label; None when ``audio`` has no voiced frame or nothing was fitted."""
        f = harmonic_profile(audio, pitch_track(audio))
        if f is None or not self.centroids:
            return None
        return min(self.centroids, key=lambda k: float(np.sum((self.centroids[k] - f) ** 2)))
