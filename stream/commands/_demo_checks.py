"""What ``mmstream demo`` checks before it starts anything.

The demo starts a broker and loads a model (about ten seconds) before its inputs open; a typo in a
file name, a camera that is not there or two picture sources used to fail only then, after the
wait and among start-up lines. Each is refused here in one line, before anything is started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream.errors import CaptureError, ConfigError

__all__ = ["check_demo_args", "expected_modalities"]


def check_demo_args(args: argparse.Namespace) -> None:
    """Refuse arguments the demo could not run with.

    Raises:
        ConfigError: a missing checkpoint folder.
        CaptureError: two picture sources, a missing or unreadable video file, a camera or
            microphone that is not there.
    """
    from stream.sources.live import demo_source_ids

    if args.camera or args.mic or args.video:
        demo_source_ids(camera=args.camera, mic=args.mic, video=args.video)  # refuses --camera with --video
    if args.model and not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: no such checkpoint folder; write one with `mmstream train`, "
                          "or leave --model out for the preset")
    if args.video:
        _check_video_file(args.video)
    if args.camera:
        _check_camera(args.camera)
    if args.mic:
        from stream.sources.mic import check_input_device

        check_input_device(None if args.mic == "default" else args.mic)


def expected_modalities(args: argparse.Namespace) -> list[str] | None:
    """The modalities the demo's live inputs send (none sends transcripts), for ``window.modalities``:
    their windows then close as soon as picture and sound are in, complete. None: synthetic sources,
    which send all three."""
    kinds = [kind for kind, given in (("video", args.camera or args.video), ("audio", args.mic)) if given]
    return kinds or None


def _check_video_file(path: str) -> None:
    if not Path(path).is_file():
        raise CaptureError(f"video file {path} does not exist" if not Path(path).exists()
                           else f"video file {path} is not a file")
    _check_opens(path)


def _check_camera(device: str) -> None:
    """A camera index must be a device now; a file must exist and hold video. A stream URL is left
    to the camera source, which reconnects to it (it may come up after the demo)."""
    if "://" in device:
        return
    if device.isdigit():
        if sys.platform.startswith("linux") and not Path(f"/dev/video{device}").exists():
            here = sorted(str(p) for p in Path("/dev").glob("video*"))
            raise CaptureError(f"no camera {device}: /dev/video{device} does not exist (cameras here: "
                               f"{', '.join(here) or 'none'}); give --camera another index, or --video FILE")
        return  # elsewhere, opening an absent index only prints OpenCV's own noise: the source says it
    if not Path(device).exists():
        raise CaptureError(f"camera {device!r}: no such device or file")
    _check_opens(device)


def _check_opens(path: str) -> None:
    from stream.sources.camera import open_capture

    open_capture(path, timeout_ms=5000).release()
