"""Rules and alerts: a pure rules engine over window results (``engine``), its rules file
(``rules``). ``mmstream alerts`` (stream/commands/alerts.py) runs it against Kafka; this package
never imports a Kafka client. See docs/alerts.md."""

from stream.alerts.engine import Engine, Verdict, judge
from stream.alerts.rules import AbsenceRule, LatencyRule, PhraseRule, Rule, RulesFile, ScoreRule, load_rules

__all__ = ["AbsenceRule", "Engine", "LatencyRule", "PhraseRule", "Rule", "RulesFile", "ScoreRule", "Verdict",
           "judge", "load_rules"]
