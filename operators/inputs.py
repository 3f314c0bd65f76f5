"""The plain per-window input the runtime fills and the per-window output it reads.

Both are dataclasses of plain Python/numpy values (no torch), so the runtime can build and read
them without knowing anything about the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.contract import Modality, VideoFrame

__all__ = ["WindowInput", "WindowOutput"]


@dataclass
class WindowInput:
    """Everything one closed window holds, per modality.

    Attributes:
        frames: the window's frames, time-ordered; encodings jpeg, png or raw bgr24. Decoded by
            the model (OpenCV), so a frame that does not decode is reported in
            ``WindowOutput.dropped_frames`` by its index in this list, never raised; so is a JPEG
            or PNG whose header declares a side over ``MAX_FRAME_SIDE`` (8192) or no size at all,
            which is never handed to OpenCV.
        audio: float32 samples in [-1, 1], shape (n_samples, channels), gaps already zero-filled;
            None when the window has no audio.
        sample_rate: Hz of ``audio``; None when ``audio`` is None.
        texts: (segment text, overlap fraction in [0, 1]) for each transcript segment overlapping
            the window; the fraction weights the segment's embedding.
        present: the runtime's presence per modality. A modality marked absent is ignored even
            when data is given (masks, not zeros: the result equals a window without that data).
            A modality missing from the dict counts as present when it has data.
    """

    frames: list[VideoFrame] = field(default_factory=list)
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    texts: list[tuple[str, float]] = field(default_factory=list)
    present: dict[Modality, bool] = field(default_factory=dict)

    def wants(self, modality: Modality) -> bool:
        """Whether the runtime marked ``modality`` present (default: yes)."""
        return bool(self.present.get(modality, True))


@dataclass
class WindowOutput:
    """The model's answer for one window.

    Attributes:
        scores: label -> probability in [0, 1] (multi-label: they do not sum to 1).
        label: the top-scoring label; None when no modality was usable (scores are then the
            head's prior: 0.5 each for an untrained head).
        embedding: the window embedding (fused, or the shared MiniLM-space one for the offline
            preset), L2-normalised; all zeros when the offline preset sees no modality (there
            is nothing to place in its shared space); None when the model is configured without
            embeddings.
        outputs: per-modality scalar outputs, e.g. ``speech_probability``, ``audio_rms``,
            ``audio_db``, ``image_top_prob``, ``frames_used``.
        dropped_frames: (index into ``WindowInput.frames``, reason) for each frame that failed to
            decode and was skipped.
        used: the modalities that actually contributed (present and with usable data).
        image_class: the top ImageNet class name when the vision encoder has one.
        scores_by_modality: modality ("video", "audio", "text") -> label -> calibrated probability
            from that modality alone, for the present modalities and the labels each can observe
            (the offline preset; empty for a model without per-modality scores).
        present: the labels whose score reaches their threshold, highest score first.
    """

    scores: dict[str, float]
    label: str | None
    embedding: list[float] | None
    outputs: dict[str, float]
    dropped_frames: list[tuple[int, str]] = field(default_factory=list)
    used: dict[Modality, bool] = field(default_factory=dict)
    image_class: str | None = None
    scores_by_modality: dict[str, dict[str, float]] = field(default_factory=dict)
    present: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (modality keys as strings)."""
        return {
            "scores": self.scores, "label": self.label, "embedding": self.embedding,
            "outputs": self.outputs, "dropped_frames": [list(d) for d in self.dropped_frames],
            "used": {m.value: v for m, v in self.used.items()}, "image_class": self.image_class,
            "scores_by_modality": self.scores_by_modality, "present": self.present,
        }
