"""Synthetic audio, its measurements, the pretraining corpus and the few-shot episodes."""

import re

import numpy as np
import pytest
import torch

from hysparse_kernels.models.audio import BOS, EMPTY, EOSP, SOSP, AudioTokenizer, TokenizerConfig, decode_text
from hysparse_kernels.training.audio import corpus, features, fewshot, synth


pytestmark = pytest.mark.one_thread


@pytest.mark.parametrize("kind", synth.KINDS)
def test_every_kind_is_seeded_bounded_and_described(kind):
    a, meta = synth.random_clip(np.random.default_rng(3), kind)
    b, _ = synth.random_clip(np.random.default_rng(3), kind)
    c, _ = synth.random_clip(np.random.default_rng(4), kind)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a[: len(c)], c[: len(a)])
    assert 0.3 < np.abs(a).max() <= 0.8 + 1e-6 and np.isfinite(a).all()
    assert meta["kind"] == kind and synth.describe(meta)


def test_rhythm_is_whole_frames_and_hits_sit_on_the_pattern():
    pattern = (1, 0, 1, 1, 0, 0, 1, 0)
    audio, meta = synth.rhythm(np.random.default_rng(0), pattern=pattern, step_frames=5, bars=2)
    assert len(audio) == 2 * 8 * 5 * synth.FRAME
    rms = features.step_rms(audio, 5, 16)
    hits = features.step_hits(audio, 5, 16, rms.max())
    assert hits.tolist() == list(map(bool, pattern)) * 2
    assert synth.describe(meta) == "a beat x.xx..x."


@pytest.mark.parametrize("timbre", synth.TIMBRES)
def test_pitch_track_follows_a_melody(timbre):
    notes = [55, 62, 69, 76]
    audio, _ = synth.melody(np.random.default_rng(1), notes=notes, step_frames=5, timbre=timbre)
    f0 = features.pitch_track(audio)
    ref = np.repeat(synth.midi_to_hz(notes), 5)
    inner = np.concatenate([np.arange(5 * i + 1, 5 * i + 4) for i in range(4)])  # away from note boundaries
    np.testing.assert_allclose(features.semitones(f0[inner]), features.semitones(ref[inner]), atol=0.3)
    assert features.pitch_accuracy(f0, features.pitch_track(audio)) == 1.0


def test_timbre_classifier_hears_the_timbres():
    rng = np.random.default_rng(2)
    clf = features.TimbreClassifier().fit([(synth.melody(rng, timbre=t)[0], t) for t in synth.TIMBRES for _ in range(4)])
    right = [clf.predict(synth.melody(rng, timbre=t)[0]) == t for t in synth.TIMBRES for _ in range(6)]
    assert np.mean(right) >= 0.7  # chance is 0.25


def test_word_pools_and_beats_are_split():
    assert not set(corpus.TRAIN_WORDS) & set(corpus.EVAL_WORDS) and len(corpus.EVAL_WORDS) > 100
    rng = np.random.default_rng(0)
    train = {corpus.train_pattern(rng) for _ in range(200)}
    held = {corpus.eval_pattern(rng) for _ in range(50)}
    assert not train & held and all(p[:4] != p[4:] for p in held)


def test_documents_hold_no_held_out_words():
    words = set(corpus.EVAL_WORDS)
    for i in range(60):
        rng = np.random.default_rng((7, i))
        kind = corpus.DOC_KINDS[i % len(corpus.DOC_KINDS)]
        for seg_kind, value in corpus.DOCS[kind](rng):
            if seg_kind == "text":
                assert not set(re.findall(r"[a-z]+", value)) & words, value


def test_assemble_hand_worked():
    """text "hi", a closed span of 2 patches, an open span with 1 patch, an open empty span."""
    P, empty = 2, (5, 5)
    codes = [torch.tensor([[1, 2], [3, 4], [0, 1], [2, 3]]), torch.tensor([[4, 4], [1, 1]])]
    segs = [("text", "hi"), ("audio", "clip"), ("open", None), ("open", "clip2")]
    text, audio = corpus.assemble(segs, codes, empty, P)
    assert text.tolist() == [104, 105, SOSP, EMPTY, EMPTY, EOSP, SOSP, SOSP, EMPTY]
    assert audio.shape == (9, 2, 2)
    assert audio[3].tolist() == [[1, 2], [3, 4]] and audio[4].tolist() == [[0, 1], [2, 3]]
    assert audio[8].tolist() == [[4, 4], [1, 1]]
    assert all(audio[i].tolist() == [[5, 5], [5, 5]] for i in (0, 1, 2, 5, 6, 7))


def test_corpus_batches_pack_documents():
    tok = AudioTokenizer(TokenizerConfig(channels=8, res_blocks=1, latent=4)).eval()
    c = corpus.build_corpus(tok, 6, seed=0)
    assert len(c) == 6 and int(c.offsets[-1]) == len(c.text) == len(c.audio)
    t0, a0 = c.doc(0)
    assert a0.shape == (len(t0), 4, 8)
    assert ((t0 == EMPTY) == (a0 != torch.tensor(tok.cfg.codebook_sizes)).all(-1).all(-1)).all()  # codes only at audio
    text, audio = c.batch(np.random.default_rng(1), 3, 40, tok.cfg.codebook_sizes)
    again = c.batch(np.random.default_rng(1), 3, 40, tok.cfg.codebook_sizes)
    assert text.shape == (3, 40) and audio.shape == (3, 40, 4, 8) and torch.equal(text, again[0])
    assert (text[:, 0] == BOS).all()


@pytest.mark.parametrize("task", fewshot.TASKS)
def test_episodes_nest_shots_and_hold_out_what_they_should(task):
    eps = fewshot.make_episodes(task, 3, seed=0)
    again = fewshot.make_episodes(task, 3, seed=0)
    for ep, ep2 in zip(eps, again):
        assert len(ep.shots) == fewshot.MAX_SHOTS
        p0, p2, p4 = ep.prompt(0), ep.prompt(2), ep.prompt(4)
        same = lambda a, b: len(a) == len(b) and all(x[0] == y[0] and x[1] is y[1] for x, y in zip(a, b))  # noqa: E731
        q = len(ep.query)
        assert same(p0, ep.query) and same(p4[: len(p2) - q], p2[:-q]) and same(p4[-q:], ep.query)
        assert len(p0) < len(p2) < len(p4)
        assert all(kind in ("audio", "text", "open") and (value is None or len(value)) for kind, value in p4)
        if task == "classify":
            assert set(ep.candidates) <= set(corpus.EVAL_WORDS) and 0 <= ep.label < 3
            assert sum(k == "text" for shot in ep.shots[:2] for k, _ in shot) == 6  # 2 labelled clips per class
        else:
            assert ep.query[-1][0] == "open" and ep.answer is not None and np.array_equal(ep.answer, ep2.answer)
    if task == "rhythm":
        assert all(corpus._eval_pattern(ep.meta["pattern"]) for ep in eps)


def test_the_measures_score_clean_answers_right():
    """The measures behind the few-shot scores, on the synthesised answers themselves: a pitch
    task's answer matches itself and not its query; a rhythm answer's hits are the beat's."""
    rng = np.random.default_rng(0)
    ep = fewshot.transform_episode(rng, "pitch")
    f_ans = features.pitch_track(ep.answer)
    assert features.pitch_accuracy(f_ans, f_ans) == 1.0
    assert features.pitch_accuracy(features.pitch_track(ep.meta["query"]), f_ans) < 0.2  # a 5 or 7 semitone shift
    r = fewshot.rhythm_episode(rng)
    step, pattern = r.meta["step_frames"], np.array(r.meta["pattern"], bool)
    ref = features.step_rms(r.meta["first"], step, 4)[pattern[:4]].mean()
    assert features.step_hits(r.answer, step, 4, ref).tolist() == pattern[4:].tolist()
    assert "<|sosp|>" in decode_text([SOSP])
