"""Producers of contract-v1 records: synthetic scenes, files, cameras, microphones, live transcription.

Each source turns its input into ``VideoFrame``/``AudioChunk``/``TranscriptSegment`` items stamped
from one capture clock (``clock.CaptureClock``) and publishes them through ``Publisher`` (topics
created first, bounded in-flight sends). Heavy dependencies (OpenCV, PyAudio, faster-whisper) are
imported by the modules that need them, so importing this package stays cheap.
"""

from stream.sources._publish import Publisher, PublishStats

__all__ = ["PublishStats", "Publisher"]
