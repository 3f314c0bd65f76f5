"""Rules and alerts: a pure rules engine over window results (``engine``, no Kafka, no clock),
its rules file (``rules``), and the alerts topic's reading and writing (``publisher``), shared by
``mmstream alerts`` and the processor's in-process rules. See docs/alerts.md."""

from stream.alerts.engine import Engine, Verdict, judge
from stream.alerts.rules import AbsenceRule, LatencyRule, PhraseRule, Rule, RulesFile, ScoreRule, load_rules

__all__ = ["AbsenceRule", "Engine", "LatencyRule", "PhraseRule", "Rule", "RulesFile", "ScoreRule", "Verdict",
           "judge", "load_rules"]
