"""Turning model outputs into answers: top-k tags and sound events (onset, offset, label, score).

Used by the command line (``inference.py``) and the Python API (``panns.load(...).tag``,
``.detect_events``). :class:`EventTracker` consumes framewise output in consecutive pieces, so the
events of an hour-long recording are found without holding its whole framewise matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


def top_indexes(probs: np.ndarray, k: int) -> np.ndarray:
    """Official order: ``argsort`` reversed (descending), first k."""
    return np.argsort(probs)[::-1][:k]


def tags_of(probs: np.ndarray, labels: Sequence[str], ids: Sequence[str], top_k: int) -> List[dict]:
    """Top-k tags of one clip: rank (1-based), class index, mid, label, probability."""
    return [{"rank": r + 1, "index": int(i), "mid": ids[i], "label": labels[i], "probability": float(probs[i])}
            for r, i in enumerate(top_indexes(probs, top_k))]


@dataclass
class Event:
    onset: float      # seconds
    offset: float     # seconds
    label: str
    score: float      # highest framewise probability inside the event
    index: int        # class index

    def to_dict(self) -> dict:
        return {"onset": round(self.onset, 3), "offset": round(self.offset, 3), "label": self.label,
                "index": self.index, "score": round(self.score, 4)}


# Event post-processing defaults (offline detection, the live stream, the Python API): the official
# threshold, and no minimum duration.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_DURATION = 0.0


class EventTracker:
    """Runs of frames whose probability is >= threshold, per class, found piece by piece.

    An event spans frames [a, b) -> onset a/fps, offset b/fps (clipped to ``duration`` seconds
    when given); its score is the highest probability inside; events shorter than min_duration
    are dropped. :meth:`events` sorts by onset, then score (descending), then class."""

    def __init__(self, labels: Sequence[str], frames_per_second: float, threshold: float = DEFAULT_THRESHOLD,
                 min_duration: float = DEFAULT_MIN_DURATION):
        self.labels, self.fps = labels, frames_per_second
        self.threshold, self.min_duration = threshold, min_duration
        self.frame = 0                         # index of the next frame to come
        self.start = np.full(len(labels), -1)  # open run start per class (-1: none)
        self.peak = np.zeros(len(labels), np.float32)
        self.found: List[Event] = []

    def _close(self, c: int, a: int, b: int, score: float, duration: Optional[float]) -> None:
        # plain floats (not numpy scalars, whatever a and b are): events go to JSON as they are
        onset, offset = float(a / self.fps), float(b / self.fps)
        if duration is not None:
            offset = min(offset, float(duration))
        if offset - onset + 1e-9 >= self.min_duration:
            self.found.append(Event(onset, offset, self.labels[c], float(score), int(c)))

    def update(self, frames: np.ndarray) -> None:
        """Consume the next (k, classes) framewise probabilities."""
        if len(frames) == 0:
            return
        active = frames >= self.threshold
        f0 = self.frame
        for c in np.nonzero(active.any(axis=0) | (self.start >= 0))[0]:
            col = active[:, c]
            was_open = self.start[c] >= 0
            edges = np.diff(np.concatenate([[was_open], col, [False]]).astype(np.int8))
            ons, offs = list(np.nonzero(edges == 1)[0]), list(np.nonzero(edges == -1)[0])
            if was_open:
                ons = [None] + ons
            for a, b in zip(ons, offs):
                if b == len(col):   # still active at the end of this piece: stays open
                    lo = 0 if a is None else a
                    self.peak[c] = max(self.peak[c] if a is None else 0.0, frames[lo:, c].max())
                    if a is not None:
                        self.start[c] = f0 + a
                    continue
                if a is None:
                    score = max(self.peak[c], frames[:b, c].max()) if b > 0 else self.peak[c]
                    self._close(c, int(self.start[c]), f0 + b, score, None)
                    self.start[c] = -1
                else:
                    self._close(c, f0 + a, f0 + b, frames[a:b, c].max(), None)
        self.frame += len(frames)

    def events(self, duration: Optional[float] = None) -> List[Event]:
        """Close the runs still open at the end and return every event, sorted."""
        for c in np.nonzero(self.start >= 0)[0]:
            self._close(int(c), int(self.start[c]), self.frame, self.peak[c], duration)
            self.start[c] = -1
        if duration is not None:
            for e in self.found:
                e.offset = min(e.offset, float(duration))
            self.found = [e for e in self.found if e.offset - e.onset + 1e-9 >= self.min_duration]
        self.found.sort(key=_event_order)
        return self.found

    def closed(self) -> List[Event]:
        """The events closed since the last call, sorted as :meth:`events` sorts, each handed out once
        (a stream reports events as they end; :meth:`events` then closes and returns the rest)."""
        out, self.found = sorted(self.found, key=_event_order), []
        return out


def _event_order(e: Event):
    return (e.onset, -e.score, e.index)


def detect_events(framewise: np.ndarray, labels: Sequence[str], frames_per_second: float,
                  threshold: float = DEFAULT_THRESHOLD, min_duration: float = DEFAULT_MIN_DURATION,
                  duration: Optional[float] = None) -> List[Event]:
    """Events of a whole (frames, classes) framewise matrix (see EventTracker)."""
    tracker = EventTracker(labels, frames_per_second, threshold, min_duration)
    tracker.update(framewise)
    return tracker.events(duration)
