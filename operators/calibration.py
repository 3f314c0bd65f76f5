"""Calibrated per-modality scores, pooled as evidence: the offline preset's label scoring.

Each present modality gives, per label, one number of evidence ``x`` in the shared MiniLM label
space (see ``FusedModel._evidence``): for video the ImageNet probabilities spread over the labels
by how close each class's prompt is to each label's; for text the cosine of the transcript with
the label; for audio the cosine of the label with four cue phrases weighted by DSP cues (speech
probability from Silero VAD, loudness, tonality from ``operators.audio_cues``).

Calibration (Platt scaling) turns evidence into a probability per modality:
``logit[m, l] = slope[m] * x[m, l] + bias[m] + label_bias[m][l]``. Pooling combines the present
modalities that can observe a label as independent evidence (log-linear pooling, i.e. naive
Bayes in log-odds): ``pooled[l] = prior + sum_m (logit[m, l] - prior)``. A modality alone gives
its own calibrated probability; two agreeing modalities give more confidence than either; a
modality that cannot observe a label (a camera and speech) does not vote on it, so a visible
cat and audible speech are both reported, each with its own modality's probability. Labels no
present modality observes stay at the prior.

The numbers are fitted by ``fit`` (logistic loss, L2 on the per-label biases) on the ``fit``
split of ``bench.labels``, built from what ships: ``python -m bench.labels --fit`` prints them and
``operators/presets.py`` stores them with the preset (and so in every checkpoint's config.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__all__ = [
    "AUDIO_CUES",
    "AudioCues",
    "Calibration",
    "ModalityCalibration",
    "PooledScores",
    "Scorer",
    "audio_cue_weights",
    "class_to_label",
    "fit",
]

MODALITY_KEYS: tuple[str, ...] = ("video", "audio", "text")

# What each audio cue means in the shared text space; weighted by ``audio_cue_weights``.
AUDIO_CUES: dict[str, str] = {
    "speech": "someone speaking",
    "silence": "complete silence",
    "tonal": "music playing",
    "noise": "static noise",
}


class ModalityCalibration(BaseModel):
    """Platt scaling of one modality's evidence, and the labels it cannot observe."""

    model_config = ConfigDict(extra="forbid")

    slope: float = Field(10.0, gt=0, description="logit per unit of evidence")
    bias: float = Field(-3.0, description="logit at zero evidence")
    label_bias: dict[str, float] = Field(default_factory=dict, description="per-label shift of the logit")
    ignores: list[str] = Field(default_factory=list, description="labels this modality cannot observe "
                               "(a camera cannot hear speech): it does not vote on them")


class AudioCues(BaseModel):
    """Where loudness and tonality turn from one cue to the other (sigmoids; dB)."""

    model_config = ConfigDict(extra="forbid")

    quiet_db: float = Field(-50.0, description="RMS level (dBFS) half-way between silence and sound: digital "
                            "silence is under -90 dBFS, a quiet room -75, speech and music -35 to -10")
    quiet_width_db: float = Field(4.0, gt=0)
    tonal_db: float = Field(-18.0, description="peak-to-rest power (dB, operators.audio_cues) half-way between "
                            "noise (-33 dB and under) and plucked chords (-5 dB and over)")
    tonal_width_db: float = Field(3.0, gt=0)


class Calibration(BaseModel):
    """Per-modality calibration, the pooling prior and the video prompt temperature.

    Defaults are generic (no per-label shifts); the offline preset stores fitted values.
    """

    model_config = ConfigDict(extra="forbid")

    video: ModalityCalibration = Field(default_factory=ModalityCalibration)
    audio: ModalityCalibration = Field(default_factory=ModalityCalibration)
    text: ModalityCalibration = Field(default_factory=ModalityCalibration)
    prior: float = Field(-2.0, description="logit of a label with no evidence (pooling's baseline)")
    class_temperature: float = Field(0.05, gt=0, description="video: softmax temperature spreading each "
                                     "ImageNet class over the labels by prompt cosine")
    audio_cues: AudioCues = Field(default_factory=AudioCues)

    def modality(self, key: str) -> ModalityCalibration:
        return {"video": self.video, "audio": self.audio, "text": self.text}[key]


@dataclass
class PooledScores:
    """Attributes:
    modality_logits: (B, M, L) calibrated logits per modality.
    observed: (B, M, L) bool: the modality is present and can observe the label.
    logits: (B, L) pooled logits.
    """

    modality_logits: torch.Tensor
    observed: torch.Tensor
    logits: torch.Tensor


def class_to_label(class_emb: torch.Tensor, label_prompt_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """(C, L): each class's share of each label, by softmax over prompt cosines (rows sum to 1)."""
    return torch.softmax(class_emb.float() @ label_prompt_emb.float().T / temperature, dim=1)


def audio_cue_weights(speech: torch.Tensor, rms: torch.Tensor, tonality: torch.Tensor,
                      cues: AudioCues) -> torch.Tensor:
    """(B, 4) weights of the cues speech, silence, tonal, noise (rows sum to 1)."""
    p = speech.float().clamp(0, 1)
    db = 20 * torch.log10(rms.float().clamp(min=1e-6))
    loud = torch.sigmoid((db - cues.quiet_db) / cues.quiet_width_db)
    t = tonality.float().clamp(1e-6, 1 - 1e-6)
    tonal = torch.sigmoid((10 * torch.log10(t / (1 - t)) - cues.tonal_db) / cues.tonal_width_db)
    rest = (1 - p) * loud
    return torch.stack([p, (1 - p) * (1 - loud), rest * tonal, rest * (1 - tonal)], dim=1)


class Scorer(nn.Module):
    """Evidence (B, M, L) and presence (B, M) -> calibrated per-modality logits and pooled logits."""

    def __init__(self, calibration: Calibration, labels: list[str]) -> None:
        super().__init__()
        self.calibration = calibration
        cals = [calibration.modality(k) for k in MODALITY_KEYS]
        self.register_buffer("slope", torch.tensor([c.slope for c in cals]).view(1, -1, 1), persistent=False)
        self.register_buffer("bias", torch.tensor([[c.bias + c.label_bias.get(lab, 0.0) for lab in labels]
                                                   for c in cals]).unsqueeze(0), persistent=False)
        self.register_buffer("can_observe", torch.tensor([[lab not in c.ignores for lab in labels]
                                                          for c in cals]).unsqueeze(0), persistent=False)
        self.prior = calibration.prior

    def forward(self, evidence: torch.Tensor, mask: torch.Tensor) -> PooledScores:
        logits = self.slope * evidence.float() + self.bias
        observed = mask.unsqueeze(-1) & self.can_observe
        pooled = self.prior + ((logits - self.prior) * observed).sum(1)
        return PooledScores(modality_logits=logits, observed=observed, logits=pooled)


def fit(evidence: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor, labels: list[str],
        base: Calibration, label_l2: float = 0.1, l2: float = 0.05, steps: int = 300) -> Calibration:
    """Platt parameters, per-label shifts and the prior that minimise the pooled logistic loss.

    ``evidence`` (N, M, L), ``mask`` (N, M) bool, ``truth`` (N, L) in {0, 1}. ``base`` supplies
    the cue settings, temperature and each modality's ``ignores`` (kept as they are). The L2
    penalties keep per-label shifts small where the set has few examples of a label, and keep
    slopes, biases and the prior near their starting values (slope 10, bias -3, prior -2) where
    a small set is separable: without them a perfectly separated modality's slope, and so its
    confidence, grows without bound (measured: audio slope 184, prior -56).
    """
    m, n_labels = evidence.shape[1], evidence.shape[2]
    log_slope = torch.full((m,), math.log(10.0), requires_grad=True)
    bias = torch.full((m,), -3.0, requires_grad=True)
    label_bias = torch.zeros(m, n_labels, requires_grad=True)
    prior = torch.tensor(-2.0, requires_grad=True)
    observe = torch.tensor([[lab not in base.modality(k).ignores for lab in labels] for k in MODALITY_KEYS])
    observed = mask.unsqueeze(-1) & observe.unsqueeze(0)
    opt = torch.optim.LBFGS([log_slope, bias, label_bias, prior], max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        logits = log_slope.exp().view(1, -1, 1) * evidence + bias.view(1, -1, 1) + label_bias.unsqueeze(0)
        pooled = prior + ((logits - prior) * observed).sum(1)
        loss = nn.functional.binary_cross_entropy_with_logits(pooled, truth.float())
        loss = loss + label_l2 * (label_bias * observe).pow(2).mean()
        loss = loss + l2 * ((log_slope - math.log(10.0)).pow(2).sum() + ((bias + 3.0) / 3.0).pow(2).sum()
                            + ((prior + 2.0) / 2.0).pow(2))
        loss.backward()
        return loss

    opt.step(loss_fn)

    def modality(i: int, key: str) -> ModalityCalibration:
        old = base.modality(key)
        shifts = {lab: round(float(label_bias[i, j].detach()), 3) for j, lab in enumerate(labels) if lab not in old.ignores}
        return ModalityCalibration(slope=round(float(log_slope[i].detach().exp()), 3),
                                   bias=round(float(bias[i].detach()), 3),
                                   label_bias=shifts, ignores=list(old.ignores))

    return base.model_copy(update={"video": modality(0, "video"), "audio": modality(1, "audio"),
                                   "text": modality(2, "text"), "prior": round(float(prior.detach()), 3)})
