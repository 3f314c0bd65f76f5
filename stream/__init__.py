"""mmstream's runtime: Kafka, event time, batching, the processor and the CLI.

Where to start reading:

- ``stream.contract``: wire contract v1 (records, ``decode``, ``encode``) — the public interface;
- ``stream.windows``: event-time alignment (pure logic); ``stream.offsets``: the offset ledger;
- ``stream.runtime``: the processor (``Processor``), composed of the stages in ``stream.stages``;
- ``stream.config``: the settings; ``stream.errors``: every error and dead-letter reason;
- ``stream.sources``: producers (synthetic, camera, microphone, files, transcription);
- ``stream.cli`` and ``stream.commands``: the ``mmstream`` command.

Importing ``stream`` imports nothing heavy; the modules above are imported where used.
"""
