"""Deterministic simulation of the processor's decisions (FoundationDB's and TigerBeetle's
simulation testing are the model).

The real ``stream.runtime.Processor`` (intake, alignment, flow control, idle judgement, batching,
publishing, the offset ledger, horizons and commits) runs against a simulated broker
(``broker``, ``clients``) on an event loop whose clock is simulated (``clock``); a seed picks the
input streams and the faults (``scenario``); invariants are checked after every step and at every
acknowledgement and commit (``invariants``); ``run.simulate(seed)`` runs one seed live and as a
backfill and reports what broke, where, and when. Seeds replay exactly.

    from stream.sim import simulate
    report = simulate(7)
    report.ok, [str(v) for v in report.violations]

``python -m bench.simulate --seeds N --json`` runs many seeds; docs/simulation.md explains.
"""

from stream.sim.run import SeedReport, simulate

__all__ = ["SeedReport", "simulate"]
