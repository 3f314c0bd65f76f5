"""The labelled offline set of ``bench.labels``: built in a folder from what ships, never committed.

Pictures come from scikit-image's bundled samples, sounds from sox (tones, chords, coloured
noise, silence), speech from flite and espeak-ng, sentences are written here. Each item names
its true labels (multi-label: a cat picture with speech audio is ``animal`` and ``speech``) and
its split: ``fit`` items are what ``operators.calibration`` may be fitted on, ``eval`` items are
what the figures are reported on. The two splits share no picture, no sound recipe and no
sentence, so a calibration fitted on ``fit`` is not judged on what it saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Item", "build", "items", "load_manifest"]


@dataclass(frozen=True)
class Item:
    """One window of the set: which picture, sound and sentence it holds, and its true labels."""

    name: str
    split: str
    truth: list[str]
    image: str | None = None
    sound: str | None = None
    text: str | None = None
    files: dict[str, str] = field(default_factory=dict)


# name -> (sox arguments after the output file; None = speech, handled below)
SOUNDS: dict[str, list[str]] = {
    "tone440": ["synth", "1", "sine", "440", "vol", "0.5"],
    "tone1000": ["synth", "1", "sine", "1000", "vol", "0.3"],
    "chord_c": ["synth", "1", "pluck", "C4", "pluck", "E4", "pluck", "G4"],
    "chord_piano_f": ["synth", "1.5", "pluck", "F3", "pluck", "A3", "pluck", "C4", "pluck", "F4"],
    "white": ["synth", "1", "whitenoise", "vol", "0.3"],
    "brown": ["synth", "1", "brownnoise", "vol", "0.5"],
    "silence": ["synth", "1", "sine", "0", "vol", "0"],
    # fit split
    "tone660": ["synth", "1", "sine", "660", "vol", "0.4"],
    "square300": ["synth", "1", "square", "300", "vol", "0.2"],
    "chord_am": ["synth", "1", "pluck", "A3", "pluck", "C4", "pluck", "E4"],
    "chord_sine_g": ["synth", "1", "sine", "196", "sine", "247", "sine", "294"],
    "pink": ["synth", "1", "pinknoise", "vol", "0.4"],
    "white_quiet": ["synth", "1", "whitenoise", "vol", "0.05"],
    "room_tone": ["synth", "1", "whitenoise", "vol", "0.0005"],
}
SPEECH: dict[str, list[str]] = {
    "flite_kal": ["flite", "-voice", "kal", "-t", "Please turn on the kitchen light, it is getting dark."],
    "flite_slt": ["flite", "-voice", "slt", "-t", "The meeting starts at nine tomorrow morning."],
    "espeak_us": ["espeak-ng", "-v", "en-us", "Could you send me the report before lunch?"],
    # fit split
    "flite_awb": ["flite", "-voice", "awb", "-t", "I will call you back in ten minutes."],
    "flite_rms": ["flite", "-voice", "rms", "-t", "Where did you put the car keys yesterday?"],
    "espeak_gb": ["espeak-ng", "-v", "en-gb", "The weather will be sunny for the rest of the week."],
}
IMAGES: dict[str, str] = {  # name -> skimage.data function
    "chelsea": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket",
    "camera": "camera", "page": "page",
    # fit split
    "motorcycle": "stereo_motorcycle", "horse": "horse", "text": "text", "face0": "lfw_subset",
    "brick": "brick", "moon": "moon", "coins": "coins", "colorwheel": "colorwheel",
}


def items() -> list[Item]:
    """Every item of the set, ``eval`` first."""
    ev, ft = "eval", "fit"
    return [
        # pictures alone
        Item("img:chelsea", ev, ["animal"], image="chelsea"),
        Item("img:coffee", ev, ["food"], image="coffee"),
        Item("img:astronaut", ev, ["person"], image="astronaut"),
        Item("img:rocket", ev, ["vehicle"], image="rocket"),
        Item("img:camera", ev, ["person"], image="camera"),
        Item("img:page", ev, ["text on screen"], image="page"),
        # sounds alone
        Item("snd:tone440", ev, ["music"], sound="tone440"),
        Item("snd:tone1000", ev, ["music"], sound="tone1000"),
        Item("snd:chord_c", ev, ["music"], sound="chord_c"),
        Item("snd:chord_piano_f", ev, ["music"], sound="chord_piano_f"),
        Item("snd:white", ev, [], sound="white"),
        Item("snd:brown", ev, [], sound="brown"),
        Item("snd:silence", ev, ["silence"], sound="silence"),
        Item("snd:flite_kal", ev, ["speech"], sound="flite_kal"),
        Item("snd:flite_slt", ev, ["speech"], sound="flite_slt"),
        Item("snd:espeak_us", ev, ["speech"], sound="espeak_us"),
        # sentences alone
        Item("txt:coffee", ev, ["food"], text="please pour me a cup of coffee"),
        Item("txt:cat", ev, ["animal"], text="my cat is sleeping on the couch"),
        Item("txt:train", ev, ["vehicle"], text="the train to the airport is delayed"),
        Item("txt:band", ev, ["music"], text="the band is playing a new song tonight"),
        Item("txt:man", ev, ["person"], text="the man in the red jacket waved at us"),
        Item("txt:sign", ev, ["text on screen"], text="the slide says quarterly results in big letters"),
        # mixed windows
        Item("mix:chelsea+speech", ev, ["animal", "speech"], image="chelsea", sound="flite_kal"),
        Item("mix:coffee+chord", ev, ["food", "music"], image="coffee", sound="chord_c"),
        Item("mix:astronaut+silence", ev, ["person", "silence"], image="astronaut", sound="silence"),
        Item("mix:rocket+white", ev, ["vehicle"], image="rocket", sound="white"),
        Item("mix:chelsea+speech+text", ev, ["animal", "speech"], image="chelsea", sound="espeak_us",
             text="look at the cat on the chair"),
        Item("mix:camera+tone", ev, ["person", "music"], image="camera", sound="tone440"),
        # ---- fit split: other pictures, sound recipes, voices and sentences
        Item("img:motorcycle", ft, ["vehicle"], image="motorcycle"),
        Item("img:horse", ft, ["animal"], image="horse"),
        Item("img:text", ft, ["text on screen"], image="text"),
        Item("img:face0", ft, ["person"], image="face0"),
        Item("img:brick", ft, [], image="brick"),
        Item("img:moon", ft, [], image="moon"),
        Item("img:coins", ft, [], image="coins"),
        Item("img:colorwheel", ft, [], image="colorwheel"),
        Item("snd:tone660", ft, ["music"], sound="tone660"),
        Item("snd:square300", ft, ["music"], sound="square300"),
        Item("snd:chord_am", ft, ["music"], sound="chord_am"),
        Item("snd:chord_sine_g", ft, ["music"], sound="chord_sine_g"),
        Item("snd:pink", ft, [], sound="pink"),
        Item("snd:white_quiet", ft, [], sound="white_quiet"),
        Item("snd:room_tone", ft, ["silence"], sound="room_tone"),
        Item("snd:flite_awb", ft, ["speech"], sound="flite_awb"),
        Item("snd:flite_rms", ft, ["speech"], sound="flite_rms"),
        Item("snd:espeak_gb", ft, ["speech"], sound="espeak_gb"),
        Item("txt:pasta", ft, ["food"], text="we had pasta and bread for dinner"),
        Item("txt:dog", ft, ["animal"], text="the dog keeps barking at the neighbours"),
        Item("txt:bus", ft, ["vehicle"], text="a red bus stopped in front of the school"),
        Item("txt:guitar", ft, ["music"], text="he played a song on his guitar"),
        Item("txt:woman", ft, ["person"], text="a woman is waiting at the door"),
        Item("txt:subtitle", ft, ["text on screen"], text="read the caption written at the bottom of the screen"),
        Item("txt:weather", ft, [], text="it might rain later this afternoon"),
        Item("mix:face0+awb", ft, ["person", "speech"], image="face0", sound="flite_awb"),
        Item("mix:horse+chord", ft, ["animal", "music"], image="horse", sound="chord_am"),
        Item("mix:motorcycle+pink", ft, ["vehicle"], image="motorcycle", sound="pink"),
    ]


def _image(name: str) -> np.ndarray:
    """A BGR uint8 picture of scikit-image's sample ``name``."""
    import cv2
    import skimage.data as sk

    x = getattr(sk, IMAGES[name])()
    if name == "motorcycle":
        x = x[0]
    elif name == "face0":
        x = cv2.resize((x[0] * 255).astype(np.uint8), (224, 224), interpolation=cv2.INTER_CUBIC)
    if x.dtype == bool:
        x = np.where(x, 0, 255).astype(np.uint8)  # the horse: a black silhouette on white
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    if x.shape[2] == 4:
        x = x[:, :, :3]
    return cv2.cvtColor(x, cv2.COLOR_RGB2BGR)


def _sound(name: str, out: Path) -> None:
    if name in SPEECH:
        cmd = SPEECH[name]
        if cmd[0] == "flite":
            subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True)
        else:
            subprocess.run([cmd[0], "-w", str(out), *cmd[1:]], check=True, capture_output=True)
        return
    tmp = out.with_suffix(".multi.wav")
    args = SOUNDS[name]
    channels = sum(a in ("sine", "pluck", "square", "whitenoise", "pinknoise", "brownnoise") for a in args)
    subprocess.run(["sox", "-R", "-n", "-r", "16000", "-b", "16", "-c", str(channels), str(tmp), *args],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(tmp), "-c", "1", str(out)], check=True, capture_output=True)  # mix down
    tmp.unlink()


def build(folder: Path) -> Path:
    """Write every picture (PNG), sound (WAV) and ``manifest.jsonl`` into ``folder``; the manifest.

    Raises RuntimeError naming the missing tool when sox, flite or espeak-ng is not installed.
    """
    import cv2

    for tool in ("sox", "flite", "espeak-ng"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install sox flite espeak-ng)")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for it in items():
        files: dict[str, str] = {}
        if it.image:
            path = folder / f"{it.image}.png"
            if not path.exists():
                cv2.imwrite(str(path), _image(it.image))
            files["image"] = path.name
        if it.sound:
            path = folder / f"{it.sound}.wav"
            if not path.exists():
                _sound(it.sound, path)
            files["sound"] = path.name
        rows.append(json.dumps(asdict(Item(it.name, it.split, it.truth, it.image, it.sound, it.text, files))))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def load_manifest(folder: Path) -> list[Item]:
    """The items of a folder written by ``build``."""
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [Item(**json.loads(line)) for line in lines if line.strip()]
