"""The processor's stages, each a class in its own module with typed inputs and outputs, explicit
backpressure and a bounded, idempotent ``stop()``; ``stream.runtime.Processor.compose`` wires them.

    Intake   consume, decode, watermark alignment, pause/resume, park    (stages/intake.py, pacing.py)
    Align    the pure aligner: items into windows, closed windows out     (stages/align.py)
    Batch    bounded queue of jobs -> batches for inference              (stages/batch.py)
    Infer    preprocess and run the model (the inference executor)       (stages/infer.py)
    Publish  results, dead letters, late copies; acks release offsets     (stages/publish.py)
    Rules    alert rules (config `rules:`) on acknowledged results        (stages/rules.py)
    Commit   offset ledger + horizons -> state topic -> commits           (stages/commit.py)

("Operators" is the model wing's word, ``operators/``; these are the runtime's steps.)
"""

from stream.stages.align import Align
from stream.stages.batch import Batch
from stream.stages.commit import Commit
from stream.stages.infer import Infer, Prepared, Scored
from stream.stages.intake import Intake
from stream.stages.publish import Publish
from stream.stages.rules import Rules

__all__ = ["Align", "Batch", "Commit", "Infer", "Intake", "Prepared", "Publish", "Rules", "Scored"]
