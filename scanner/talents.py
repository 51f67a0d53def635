"""Talents: protected performers, their consent per modality, and what a match on them means.

A *talent* is a person an index protects: several reference photos and
recordings share one name (the metadata's ``talent`` column). Their faces and
voices are templates of the talent features (``image-face``, ``audio-voice``);
they are never copy references. Consent is kept per modality, ``face`` and
``voice``, each ``yes`` or ``no`` with an optional last day; it is read at
scan time, so a withdrawn or lapsed consent applies to the next scan without
touching the templates. Consent in force gives ``licensed``, never ``flagged``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from scanner.errors import ParameterError

#: What a talent can consent to, and the feature that finds it.
MODALITIES = ("face", "voice")
#: Talent feature -> the consent it needs.
FEATURE_MODALITY = {"image-face": "face", "audio-voice": "voice"}


@dataclass(frozen=True)
class Consent:
    """One modality's consent: given or not, and its last day (ISO date) if it ends."""

    given: bool = False
    until: str | None = None

    def in_force(self, on: _dt.date) -> bool:
        """Whether it licenses a use on day ``on``."""
        return self.given and (self.until is None or on <= _dt.date.fromisoformat(self.until))

    def words(self, on: _dt.date) -> str:
        """``yes``, ``yes until 2027-03-31``, ``expired 2026-11-30`` or ``no``."""
        if not self.given:
            return "no"
        if self.until is None:
            return "yes"
        return f"yes until {self.until}" if self.in_force(on) else f"expired {self.until}"


@dataclass(frozen=True)
class Talent:
    """A protected performer as the catalog holds them.

    Attributes
    ----------
    name : the person's name (one talent per name)
    consent : modality -> :class:`Consent`
    works : their reference files in the index
    """

    name: str
    consent: dict[str, Consent] = field(default_factory=dict)
    works: int = 0

    def consent_for(self, feature: str) -> Consent:
        """The consent a match of talent ``feature`` (``image-face``, ``audio-voice``) needs."""
        return self.consent.get(FEATURE_MODALITY.get(feature, feature), Consent())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "works": self.works,
                "consent": {m: {"given": c.given, "until": c.until} for m, c in self.consent.items()}}


def parse_consent(value: str | None, *, where: str = "consent") -> bool | None:
    """``yes``/``no`` (and true/false, 1/0, y/n) as bool; ``None`` for an empty value.

    Raises
    ------
    ParameterError
        For anything else, naming ``where``.
    """
    if value is None or not str(value).strip():
        return None
    v = str(value).strip().lower()
    if v in ("yes", "y", "true", "1"):
        return True
    if v in ("no", "n", "false", "0"):
        return False
    raise ParameterError(f"{where}: consent must be yes or no, not {value!r}")


def parse_until(value: str | None) -> str | None:
    """An ISO date (``YYYY-MM-DD``) or ``None``; anything else is refused with the value named."""
    if value is None or not str(value).strip():
        return None
    try:
        return _dt.date.fromisoformat(str(value).strip()).isoformat()
    except ValueError:
        raise ParameterError(f"consent end date must be YYYY-MM-DD, not {value!r}") from None


def describe_match(talent: str, consent: str) -> str:
    """A talent match in plain words: ``resembles NAME (no consent on record)``."""
    said = {"no": "no consent on record"}.get(consent, f"consent {consent}")
    return f"resembles {talent} ({said})"
