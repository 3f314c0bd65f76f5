"""The rules file: which conditions on window results raise alerts (docs/alerts.md).

Four kinds, told apart by ``kind``. Every rule judges only what a result carries (scores,
presence, transcript, latency) and event time, never the wall clock, so a replay of the same
results raises the same alerts with the same ids.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.errors import ConfigError

__all__ = ["AbsenceRule", "LatencyRule", "PhraseRule", "Rule", "RulesFile", "ScoreRule", "load_rules"]

RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="names the rule in alert ids and metrics")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId
    sources: str = Field("*", description="source-id glob the rule applies to")


class _Streak(_Rule):
    """A condition judged per window: it fires after ``windows`` consecutive windows meet it and
    resolves after ``resolve_windows`` consecutive windows clear it (hysteresis)."""

    windows: int = Field(1, ge=1, le=10_000, description="consecutive windows that raise the alert")
    resolve_windows: int = Field(1, ge=1, le=10_000, description="consecutive clear windows that resolve it")


class ScoreRule(_Streak):
    """A label's score at or above ``threshold``; clear below ``resolve_below`` (default: the threshold)."""

    kind: Literal["score"]
    label: str
    threshold: float = Field(ge=0.0, le=1.0)
    resolve_below: float | None = Field(None, ge=0.0, le=1.0, description="lower threshold that clears; "
                                                                          "between the two the state holds")

    @model_validator(mode="after")
    def _lower(self) -> ScoreRule:
        if self.resolve_below is not None and self.resolve_below > self.threshold:
            raise ValueError(f"resolve_below {self.resolve_below} is above threshold {self.threshold}")
        return self

    @property
    def clear_below(self) -> float:
        return self.threshold if self.resolve_below is None else self.resolve_below


class PhraseRule(_Streak):
    """A word or phrase in the window's transcript (case-insensitive, whole words), optionally
    only when the window's top label is ``label``."""

    kind: Literal["phrase"]
    phrase: str = Field(min_length=1, max_length=256)
    label: str | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        """Whole words: no word character may touch either end; any whitespace between words."""
        return _phrase_pattern(self.phrase)

    @model_validator(mode="after")
    def _words(self) -> PhraseRule:
        if not self.phrase.split():
            raise ValueError("phrase has no words")
        return self


@functools.cache
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Compiled once per phrase, not per result judged."""
    words = phrase.split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.IGNORECASE)


class LatencyRule(_Streak):
    """A result's latency (``metric``, milliseconds) above ``max_ms``; clear at or below
    ``resolve_below_ms`` (default: ``max_ms``)."""

    kind: Literal["latency"]
    metric: Literal["capture_to_publish_ms", "window_end_to_publish_ms", "inference_ms"] = "capture_to_publish_ms"
    max_ms: float = Field(gt=0)
    resolve_below_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _lower(self) -> LatencyRule:
        if self.resolve_below_ms is not None and self.resolve_below_ms > self.max_ms:
            raise ValueError(f"resolve_below_ms {self.resolve_below_ms} is above max_ms {self.max_ms}")
        return self

    @property
    def clear_at_or_below(self) -> float:
        return self.max_ms if self.resolve_below_ms is None else self.resolve_below_ms


class AbsenceRule(_Rule):
    """A modality absent from a source's windows (``modality: any``: the source silent) for
    ``seconds`` of event time: from the end of its last window with it to the newest window end
    of any result seen. Resolves at the source's next window that has it."""

    kind: Literal["absent"]
    modality: Literal["video", "audio", "text", "any"] = "any"
    seconds: float = Field(gt=0, le=86_400)


Rule = Annotated[ScoreRule | PhraseRule | LatencyRule | AbsenceRule, Field(discriminator="kind")]


class RulesFile(BaseModel):
    """The rules file: ``rules:`` a list of rules with distinct ids."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> RulesFile:
        ids = [r.id for r in self.rules]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"rule ids must be distinct: {', '.join(dupes)}")
        return self


def load_rules(path: str | Path) -> RulesFile:
    """The rules of a YAML file (a mapping with ``rules:``, or the list itself).

    Raises:
        ConfigError: the file cannot be read or a rule is invalid (the message names it).
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc}") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    try:
        return RulesFile.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"rules file {path}: " + "; ".join(lines)) from None
