"""Corruption levels of the avdigits benchmark: how hard each modality is made.

Image and audio corruption are drawn independently per window, so an unreadable frame and an
unintelligible clip rarely coincide: that independence is what lets fusion beat either modality.
The default (``medium``) was tuned so that simple single-modality baselines are well below their
fusion (figures in docs/model.md, "The avdigits benchmark").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LEVEL", "LEVELS", "Corruption"]


@dataclass(frozen=True)
class Corruption:
    """Ranges are (low, high), drawn uniformly per window (image) or per clip (audio).

    ``snr_db``: speech to background noise; ``babble``: chance of a competing talker saying another
    digit (``babble_db`` quieter than the target); ``noise``: std of pixel noise (0-1 scale);
    ``blur``: Gaussian sigma in pixels of a 64-pixel frame; ``occlusion``: chance of an object in
    front of the digit covering ``occluded`` of its box; ``contrast``: ink against paper;
    ``jitter``: 0-1 amount of shift, scale, rotation and uneven light.
    """

    snr_db: tuple[float, float]
    babble: float
    babble_db: tuple[float, float]
    noise: tuple[float, float]
    blur: tuple[float, float]
    occlusion: float
    occluded: tuple[float, float]
    contrast: tuple[float, float]
    jitter: float


LEVELS: dict[str, Corruption] = {
    "clean": Corruption(snr_db=(40, 40), babble=0.0, babble_db=(6, 6), noise=(0, 0), blur=(0, 0),
                        occlusion=0.0, occluded=(0, 0), contrast=(0.9, 0.9), jitter=0.0),
    "low": Corruption(snr_db=(6, 20), babble=0.05, babble_db=(6, 12), noise=(0.02, 0.1), blur=(0, 1.0),
                      occlusion=0.2, occluded=(0.1, 0.3), contrast=(0.5, 0.9), jitter=0.3),
    "medium": Corruption(snr_db=(-3, 12), babble=0.2, babble_db=(3, 9), noise=(0.04, 0.14), blur=(0.2, 1.2),
                         occlusion=0.4, occluded=(0.2, 0.4), contrast=(0.35, 0.85), jitter=0.4),
    "high": Corruption(snr_db=(-8, 4), babble=0.4, babble_db=(0, 6), noise=(0.05, 0.2), blur=(0.3, 1.5),
                       occlusion=0.5, occluded=(0.2, 0.45), contrast=(0.3, 0.8), jitter=0.5),
}
DEFAULT_LEVEL = "medium"
