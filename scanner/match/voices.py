"""Voices of talents (``audio-voice``): each stretch of speech scored against every talent's voice.

The index keeps ``<feature>.faiss`` (the talents' stretch embeddings, exact inner
product), ``<feature>.rows.npy`` (work, stretch number) and ``<feature>.npz``
(each stretch's ``start``, ``duration`` and ``speech`` seconds), readable by the
owner only and covered by the manifest's checksums like every index file.

A talent's voice is the centroid of all their stretches, weighted by speech (GE2E's
enrolment), once per channel the references were described through
(:data:`scanner.features.voice.CHANNELS`: as recorded, a telephone band, a noisy
room); an output's stretch is scored against every talent's voices by cosine
distance, each talent by their closest voice, and its chance is the share of *other*
talents' speech that close to a talent's closest voice (:func:`scanner.policy.pair_rate`)
times the comparisons (talents x stretches of the output). The evidence says through which channel the
talent's voice matched when it was not as recorded. The null is fitted at build on the index's own talents (each
reference stretch against the centroids of the other talents); a registry too
small for that keeps :data:`PRIOR_VOICE_DISTANCE`. ``index info`` says which.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features.base import Featurizer
from scanner.features.voice import CHANNELS
from scanner.features.prepared import Prepared
from scanner.match.base import Evidence, IndexFiles, Judge, Writer
from scanner.match.templates import Templates, talent_numbers
from scanner.search_choice import Plan

#: Null of the cosine distance from a stretch of speech to another speaker's voice when the
#: index has too few talents to fit one: (centre, spread). Measured with this encoder and VAD on a
#: dubbed game's two lead voices (lines of 3 s and more, voices enrolled from 5 lines): the other
#: speaker's lines at distance 0.37 median, 0.32 at their 10th percentile; the speaker's own at 0.14.
#: One corpus only: an index with enough talents fits its own (module docstring).
PRIOR_VOICE_DISTANCE = (0.37, 0.04)
#: Stretches with less speech (seconds) than this are not judged (too little of a voice: a line of
#: 3 seconds holds about 2 seconds of speech between its pauses).
MIN_SPEECH = 1.5


def voice_groups(talent_of_row: np.ndarray, channel: np.ndarray | None) -> np.ndarray:
    """Each row's voice: its talent and channel as one number (``talent * channels + channel``),
    -1 for a row of no talent; int64 ``[shape=(n,)]``. An index built before channels: all as recorded."""
    n_ch = len(CHANNELS)
    ch = np.zeros(len(talent_of_row), np.int64) if channel is None else np.asarray(channel, np.int64)
    return np.where(talent_of_row >= 0, talent_of_row * n_ch + ch, -1)


def centroids(vecs: np.ndarray, talent_of_row: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each talent's voice (or each voice group's, :func:`voice_groups`): the speech-weighted mean
    of their stretches, unit length.

    Returns
    -------
    (talents, centroids): int64 ``[shape=(t,)]`` talent (group) numbers, float32 ``[shape=(t, d)]``
    """
    talents = np.unique(talent_of_row[talent_of_row >= 0])
    out = np.zeros((len(talents), vecs.shape[1]), np.float32)
    for k, t in enumerate(talents):
        rows = talent_of_row == t
        c = (vecs[rows] * weight[rows, None]).sum(axis=0)
        out[k] = c / max(float(np.linalg.norm(c)), 1e-12)
    return talents, out


def fit_voice_null(vecs: np.ndarray, talent_of_row: np.ndarray, weight: np.ndarray,
                   channel: np.ndarray | None = None) -> dict[str, Any]:
    """The null of distances from a stretch to other talents' voices, from the index's own talents.

    Each stretch (through each channel) against each other talent, as a scan scores it:
    the distance to the closest of that talent's voices (:func:`voice_groups`). The prior
    applies while the stretches as recorded give too few pairs: a stretch heard through
    another channel is no new sample of a voice.

    Returns
    -------
    dict
        :func:`scanner.policy.fit_null`'s model plus ``source`` (``talents`` or ``prior``),
        ``talents``, and ``within`` (median distance of a talent's stretches to their own voice)
    """
    row_group = voice_groups(talent_of_row, channel)
    groups, cents = centroids(vecs, row_group, weight)
    keep = talent_of_row >= 0
    talents = np.unique(talent_of_row[keep])
    by_voice = 1.0 - vecs[keep] @ cents.T                            # (stretches, voices)
    voice_talent = groups // len(CHANNELS)
    d = np.stack([by_voice[:, voice_talent == t].min(axis=1) for t in talents], axis=1)  # (stretches, talents)
    own = talent_of_row[keep][:, None] == talents[None, :]
    as_recorded = (row_group[keep] % len(CHANNELS) == 0)[:, None]
    null = pol.fit_null(d[~own], prior=PRIOR_VOICE_DISTANCE, independent=int((~own & as_recorded).sum()))
    within = d[own]
    return {**null, "source": "prior" if null.get("prior") else "talents", "talents": int(len(talents)),
            "within": ({"stretches": int(len(within)), "median": round(float(np.median(within)), 4)}
                       if len(within) else {"stretches": 0})}


class Voices(Templates):
    """Talents' voices: stretches of speech, any number per recording, scored per talent."""

    name = "voice"
    raw_kind = "voice_cosine"
    metric = "ip"
    described = "channel"

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        vecs, rows = writer.vectors(name)
        talent_of_row = talent_numbers(writer.work_talents(), rows[:, 0])
        extras = writer.extras(name)
        speech = extras.get("speech", np.ones(len(rows), np.float32))
        return fit_voice_null(np.asarray(vecs, np.float32), talent_of_row, np.asarray(speech, np.float32),
                              extras.get("channel"))

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return VoiceJudge(index, feat)


class VoiceJudge(Judge):
    """A voice feature of an open index: every stretch of an input against every talent's voice."""

    def __init__(self, index: IndexFiles, feat: Featurizer):
        self.index, self.feat = index, feat
        name = feat.name
        faiss_index = index.faiss_index(name)
        rows = np.asarray(index.rows(name))
        vecs = faiss_index.reconstruct_n(0, faiss_index.ntotal) if faiss_index.ntotal else np.zeros((0, 256))
        arrays = index.landmarks(name)
        speech = arrays.get("speech", np.ones(len(rows), np.float32))
        talent_of_row = talent_numbers(index.work_talents(), rows[:, 0]) if len(rows) else np.zeros(0, np.int64)
        groups, self.centroids = centroids(np.asarray(vecs, np.float32),
                                           voice_groups(talent_of_row, arrays.get("channel")), np.asarray(speech))
        # each voice's talent (column of the talents' evidence) and channel
        talents, self.talent_of = np.unique(groups // len(CHANNELS), return_inverse=True)
        self.channel_of = groups % len(CHANNELS)
        # a talent is shown through their reference with the most speech
        self.work_of = np.array([int(rows[talent_of_row == t, 0][np.argmax(speech[talent_of_row == t])])
                                 for t in talents], np.int64)

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        name = self.feat.name
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        if not len(self.centroids):
            return out
        null = self.index.null[name]
        for i, p in enumerate(batch):
            if p.error is not None or name not in p.prepared:
                continue
            stretches = p.prepared[name]
            stretches = stretches[stretches["speech"] >= MIN_SPEECH]
            if not len(stretches):
                continue
            d = 1.0 - stretches["emb"] @ self.centroids.T             # (stretches, voices)
            evs = []
            for t, work in enumerate(self.work_of):                    # per talent, its closest voice and stretch
                cols = np.flatnonzero(self.talent_of == t)
                s, c = np.unravel_index(int(np.argmin(d[:, cols])), (len(d), len(cols)))
                v = int(cols[c])
                detail = {"query_start": round(float(stretches["start"][s]), 3),
                          "duration": round(float(stretches["duration"][s]), 3),
                          "speech": round(float(stretches["speech"][s]), 3)}
                if self.channel_of[v]:
                    detail["talent_heard"] = CHANNELS[int(self.channel_of[v])]
                evs.append(Evidence(int(work), name, float(1.0 - d[s, v]), float(d[s, v]), 0, int(s), -1, detail))
            evs.sort(key=lambda e: e.distance)
            # every talent against every stretch of the output is a chance to match by chance (a
            # talent's closest voice, as the null was fitted: fit_voice_null)
            out[i] = (evs, pol.expected_chance(np.array([e.distance for e in evs]), null,
                                               len(self.work_of) * len(stretches)))
        return out
