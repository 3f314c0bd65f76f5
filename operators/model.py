"""FusedModel: three encoders, presence-masked fusion and heads, built from one config.

The runtime's view (see ``operators/__init__.py``): ``preprocess`` (CPU, thread-safe) turns
``WindowInput``s into a ``PreparedBatch``; ``infer`` (one worker thread) turns that into one
``WindowOutput`` per window. ``save``/``load`` write and read a checkpoint folder: ``config.json``
(the ``FusedModelConfig``) and ``model.safetensors``.

Why preprocess and infer are separate: decoding JPEGs, resampling and tokenising are CPU work
that can run in a thread pool for the next batch while the accelerator runs the current one;
``infer`` only moves ready tensors (pinned, non-blocking on CUDA) and runs the network.

Beside it: ``fused_config.py`` (``FusedModelConfig``, ``ModelInfo``), ``batch.py``
(``PreparedBatch``, ``FusedOutput``) and ``checkpoint.py`` (the folder format). Their public
names are re-exported here, where callers have always imported them.
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from operators.audio import AudioEncoder
from operators.batch import FusedOutput, PreparedBatch
from operators.calibration import AUDIO_CUES, Calibration, Scorer, audio_cue_weights, class_to_label
from operators.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, write_checkpoint
from operators.errors import ModelConfigError, ModelLoadError
from operators.fused_config import FusedModelConfig, ModelInfo
from operators.fusion import EventHead, ModalityProjector, build_fusion
from operators.inputs import WindowInput, WindowOutput
from operators.text import TextEncoder
from operators.vision import VisionEncoder
from stream.contract import Modality, frame_from_image

__all__ = ["CHECKPOINT_FORMAT", "FusedModel", "FusedModelConfig", "FusedOutput", "ModelInfo", "PreparedBatch"]

MODALITIES: tuple[Modality, ...] = (Modality.VIDEO, Modality.AUDIO, Modality.TEXT)

def _resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present; 'cuda' without CUDA fails at build, not at the first batch."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("model.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FusedModel(nn.Module):
    """Encoders + presence-masked fusion + heads; see the module docstring for the contract.

    Example::

        model = FusedModel.from_config(resolve(ModelConfig(preset="tiny")))
        outs = model.infer(model.preprocess([WindowInput(texts=[("hello", 1.0)])]))
    """

    def __init__(self, config: FusedModelConfig, *, compute_bridge: bool = True) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.labels = list(config.head.labels)
        self._lock = threading.Lock()
        self.freeze_encoders = True
        # True once the encoders' weights may differ from their sources' (fine-tuned, or read
        # from a checkpoint that holds them): ``save`` must then write them, as a rebuild from
        # the sources would give the head other features than it was trained on.
        self.encoders_tuned = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoders = nn.ModuleDict()
            if config.vision is not None:
                self.encoders["video"] = VisionEncoder.from_config(config.vision)
            if config.audio is not None:
                self.encoders["audio"] = AudioEncoder.from_config(config.audio)
            if config.text is not None:
                self.encoders["text"] = TextEncoder.from_config(config.text)
            torch.manual_seed(config.seed + 1)
            self.projectors = nn.ModuleDict(
                {m: ModalityProjector(enc.embed_dim, config.fusion) for m, enc in self.encoders.items()})
            self.fusion = build_fusion(config.fusion)
            torch.manual_seed(config.seed + 2)
            self.head = EventHead(config.fusion.d_model, config.head)
        self.scorer = Scorer(config.head.calibration or Calibration(), self.labels) if config.head.zero_shot else None
        self.class_names = getattr(self.encoders["video"], "class_names", None) if "video" in self.encoders else None
        if config.bridge:
            e = self.encoders["text"].embed_dim
            self.register_buffer("bridge_imagenet", torch.zeros(1000, e))
            self.register_buffer("bridge_labels", torch.zeros(len(self.labels), e))
            self.register_buffer("bridge_label_prompts", torch.zeros(len(self.labels), e))
            self.register_buffer("bridge_audio", torch.zeros(len(AUDIO_CUES), e))
            if compute_bridge:
                self._compute_bridge()
        self.eval()
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: FusedModelConfig, device: str | None = None) -> FusedModel:
        """Build (random parts seeded, pretrained parts from their packages) and place on the device.

        Raises:
            ModelLoadError: pretrained weights are missing. ModelConfigError: inconsistent config.
        """
        model = cls(config)
        return model.place(device or config.device)

    def _compute_bridge(self) -> None:
        text: TextEncoder = self.encoders["text"]  # type: ignore[assignment]
        with torch.no_grad():  # not inference_mode: the buffers must stay usable in training
            names = self.class_names or []
            self.bridge_imagenet.copy_(text.embed_texts([self.config.image_prompt.format(n) for n in names]))
            self.bridge_labels.copy_(text.embed_texts(self.labels))
            self.bridge_label_prompts.copy_(text.embed_texts([self.config.image_prompt.format(n) for n in self.labels]))
            self.bridge_audio.copy_(text.embed_texts(list(AUDIO_CUES.values())))

    def place(self, device: str | torch.device) -> FusedModel:
        """Move to ``device`` ('auto' picks CUDA when available); returns self."""
        dev = _resolve_device(device) if isinstance(device, str) else device
        self.to(dev)
        self.device = dev
        if "audio" in self.encoders:
            self.encoders["audio"].move_vad(dev)  # type: ignore[operator]
        return self

    @property
    def info(self) -> ModelInfo:
        """Name and version strings for the results' ``model`` field."""
        return ModelInfo(name=self.config.name, version=self.config.version)

    def set_optimized(self, on: bool) -> None:
        """Inference through ``operators.optimize`` (folded BatchNorm, channels-last, batched
        Silero; the default) or, with ``on=False``, through the original layers: the reference
        the optimised path is checked against, and a switch to rule it out when debugging."""
        for enc in self.encoders.values():
            if hasattr(enc, "optimized"):
                enc.optimized = on

    @property
    def use_autocast(self) -> bool:
        return self.device.type == "cuda" and self.config.autocast

    # ------------------------------------------------------------------ runtime API

    def preprocess(self, windows: list[WindowInput]) -> PreparedBatch:
        """CPU work for B windows: decode, resize, resample, log-mel, tokenise. Thread-safe.

        Never raises for bad data: an undecodable frame is skipped and listed in ``dropped``;
        empty audio or text makes that modality absent for the window.
        """
        enc = self.encoders
        vision = audio = text = None
        if "video" in enc:
            vision = enc["video"].preprocess([w.frames for w in windows],  # type: ignore[operator]
                                             [w.wants(Modality.VIDEO) for w in windows])
        if "audio" in enc:
            audio = enc["audio"].preprocess([w.audio for w in windows], [w.sample_rate for w in windows],  # type: ignore[operator]
                                            [w.wants(Modality.AUDIO) for w in windows])
        if "text" in enc:
            text = enc["text"].preprocess([w.texts for w in windows],  # type: ignore[operator]
                                          [w.wants(Modality.TEXT) for w in windows])
        dropped = vision.dropped if vision is not None else [[] for _ in windows]
        used = vision.frames_used if vision is not None else [0 for _ in windows]
        batch = PreparedBatch(size=len(windows), vision=vision, audio=audio, text=text, dropped=dropped,
                              frames_used=used)
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch

    def warmup(self) -> None:
        """One window of every modality through ``preprocess`` and ``infer``, at load: the first
        call of each part pays for lazy set-up (kernel choice and workspaces, the JPEG decoder,
        the tokenizer), and the first window served should not. Measured in a worker process
        (``python -m bench.pipeline``, tiny preset): a first batch of 16 took 45-90 ms, the
        next ones 30; a first call here takes ~13 ms, and the first batch after it ~31 ms."""
        window = WindowInput(frames=[frame_from_image("warmup", 0, np.zeros((32, 32, 3), np.uint8))],
                             audio=np.zeros((1600, 1), np.float32), sample_rate=16_000, texts=[("warm up", 1.0)])
        self.infer(self.preprocess([window]))

    def infer(self, batch: PreparedBatch) -> list[WindowOutput]:
        """Run B prepared windows: one ``WindowOutput`` each, in order. Serialised by a lock."""
        if batch.size == 0:
            return []
        with self._lock, torch.inference_mode():
            on_gpu = self.device.type == "cuda"
            moved = batch.to(self.device, non_blocking=on_gpu)
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_autocast else nullcontext()
            with amp:
                out = self.forward(moved)
            return self._outputs(batch, out)

    # ------------------------------------------------------------------ network

    def forward(self, batch: PreparedBatch) -> FusedOutput:
        """Encoders -> projections -> fusion -> heads, for a batch already on the device."""
        b = batch.size
        dev = self.device
        d = self.config.fusion.d_model
        tokens = torch.zeros(b, len(MODALITIES), d, device=dev)
        mask = torch.zeros(b, len(MODALITIES), dtype=torch.bool, device=dev)
        bridge = evidence = None
        if self.config.bridge:
            bridge = torch.zeros(b, len(MODALITIES), self.bridge_labels.shape[1], device=dev)
            evidence = torch.zeros(b, len(MODALITIES), len(self.labels), device=dev)
        speech = torch.zeros(b, device=dev)
        rms = torch.zeros(b, device=dev)
        image_probs = None
        grad = torch.is_grad_enabled() and not self.freeze_encoders
        for i, m in enumerate(MODALITIES):
            key = m.value
            sub = {"video": batch.vision, "audio": batch.audio, "text": batch.text}[key]
            if key not in self.encoders or sub is None:
                continue
            with torch.set_grad_enabled(grad):
                out = self.encoders[key](sub)
            present = out.present
            mask[:, i] = present
            # Projections only see present rows' data: absent rows are replaced, never mixed.
            tokens[:, i] = torch.where(present.unsqueeze(1), self.projectors[key](out.embedding.float()).float(),
                                       torch.zeros((), device=dev))
            if key == "audio":
                speech, rms = out.speech_probability.float(), out.rms.float()
            if key == "video":
                image_probs = out.class_probs
            if bridge is not None and evidence is not None:
                bridge[:, i] = self._bridge(key, out)
                evidence[:, i] = self._evidence(key, out) * present.unsqueeze(1)
        fused = self.fusion(tokens, mask).embedding.float()
        logits = self.head(fused).float()
        modality_scores = observed = None
        if self.scorer is not None and evidence is not None:
            pooled = self.scorer(evidence, mask)
            logits = logits + pooled.logits
            modality_scores, observed = torch.sigmoid(pooled.modality_logits), pooled.observed
        if self.config.embedding == "bridge" and bridge is not None:
            emb = (bridge * mask.unsqueeze(-1)).sum(1)
        else:
            emb = fused
        emb = nn.functional.normalize(emb.float(), dim=-1)
        return FusedOutput(logits=logits, scores=torch.sigmoid(logits), embedding=emb, mask=mask,
                           speech_probability=speech, rms=rms, image_probs=image_probs, evidence=evidence,
                           modality_scores=modality_scores, observed=observed)

    def _bridge(self, key: str, out: Any) -> torch.Tensor:
        """A modality's unit vector in the MiniLM label space (zeros where absent)."""
        if key == "video":
            v = out.class_probs.float() @ self.bridge_imagenet
        elif key == "text":
            v = out.embedding.float()
        else:
            v = self._audio_cues(out) @ self.bridge_audio
        return nn.functional.normalize(v, dim=-1) * out.present.unsqueeze(1)

    @property
    def calibration(self) -> Calibration:
        """The offline scoring's calibration (generic defaults for a model without one)."""
        return self.scorer.calibration if self.scorer is not None else Calibration()

    def _audio_cues(self, out: Any) -> torch.Tensor:
        cal = self.calibration
        tonality = out.tonality if out.tonality is not None else torch.zeros_like(out.rms)
        return audio_cue_weights(out.speech_probability, out.rms, tonality, cal.audio_cues)

    def _evidence(self, key: str, out: Any) -> torch.Tensor:
        """(B, L) a modality's evidence for each label, before calibration (operators.calibration).

        Video: the ImageNet probabilities spread over the labels (each class by its prompt's
        cosine with each label's prompt, a softmax); text: the transcript's cosine with each
        label; audio: the labels' cosines with the four cue phrases (centred over the cues),
        weighted by the DSP cues.
        """
        if key == "video":
            spread = class_to_label(self.bridge_imagenet, self.bridge_label_prompts, self.calibration.class_temperature)
            return out.class_probs.float() @ spread
        if key == "text":
            return nn.functional.normalize(out.embedding.float(), dim=-1) @ self.bridge_labels.T
        cue_cos = self.bridge_audio @ self.bridge_labels.T
        # Centred per label over the cues: evidence is "closer to this label than the average
        # cue is", so the silence cue's phrase, near "speech" in MiniLM, does not read as speech.
        return self._audio_cues(out) @ (cue_cos - cue_cos.mean(0, keepdim=True))

    def _outputs(self, batch: PreparedBatch, out: FusedOutput) -> list[WindowOutput]:
        scores = out.scores.float().cpu()
        emb = out.embedding.float().cpu() if self.config.embedding != "none" else None
        mask = out.mask.cpu()
        speech, rms = out.speech_probability.float().cpu(), out.rms.float().cpu()
        probs = out.image_probs.float().cpu() if out.image_probs is not None else None
        by_modality = self._scores_by_modality(out)
        head = self.config.head
        results = []
        for i in range(batch.size):
            used = {m: bool(mask[i, j]) for j, m in enumerate(MODALITIES)}
            row = scores[i].tolist()
            extra: dict[str, float] = {}
            image_class = None
            if used[Modality.AUDIO]:
                r = float(rms[i])
                extra.update(speech_probability=float(speech[i]), audio_rms=r,
                             audio_db=20 * math.log10(max(r, 1e-6)))
            if used[Modality.VIDEO]:
                extra["frames_used"] = float(batch.frames_used[i])
                if probs is not None:
                    top = int(probs[i].argmax())
                    extra["image_top_prob"] = float(probs[i, top])
                    image_class = self.class_names[top] if self.class_names else None
            any_used = any(used.values())
            ranked = sorted(range(len(row)), key=lambda j: -row[j])
            results.append(WindowOutput(
                scores=dict(zip(self.labels, row, strict=True)),
                label=self.labels[ranked[0]] if any_used else None,
                embedding=emb[i].tolist() if emb is not None else None,
                outputs=extra, dropped_frames=list(batch.dropped[i]), used=used, image_class=image_class,
                scores_by_modality=by_modality[i],
                present=[self.labels[j] for j in ranked if any_used and row[j] >= head.threshold_of(self.labels[j])]))
        return results

    def _scores_by_modality(self, out: FusedOutput) -> list[dict[str, dict[str, float]]]:
        """Per window: modality -> label -> calibrated probability, where the modality observed it."""
        if out.modality_scores is None or out.observed is None:
            return [{} for _ in range(out.mask.shape[0])]
        scores, observed = out.modality_scores.float().cpu().tolist(), out.observed.cpu().tolist()
        return [{m.value: {lab: s for lab, s, seen in zip(self.labels, scores[i][j], observed[i][j], strict=True) if seen}
                 for j, m in enumerate(MODALITIES) if any(observed[i][j])} for i in range(len(scores))]

    # ------------------------------------------------------------------ checkpoints

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything except the encoders: projections, fusion, heads and bridge tables."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoders.")}

    def save(self, path: str | Path, weights: Literal["all", "trainable"] = "all") -> Path:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path`` (created).

        ``weights="trainable"`` leaves out the encoders, which are then rebuilt from their
        sources (packages or model ids named in the config) on load: small checkpoints for
        frozen-encoder training. Not when ``encoders_tuned``: encoders trained here or read from
        a checkpoint that holds them cannot be rebuilt from their sources, so every weight is
        written (as ``"all"``), whatever the caller asked. Returns the folder.
        """
        if self.encoders_tuned:
            weights = "all"
        state = self.state_dict() if weights == "all" else self.trainable_state()
        return write_checkpoint(path, self.config, state, weights)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> FusedModel:
        """A model from a folder written by ``save``; outputs equal the saved model's exactly.

        A checkpoint holding encoder weights sets ``encoders_tuned``, so saving the model again
        (after frozen-encoder training, say) keeps those weights instead of the sources'.

        The bridge tables are read from the file, not recomputed: outputs match bit for bit and
        loading skips embedding a prompt per ImageNet class. A checkpoint written before the
        calibrated scores (no label prompts, three audio cues) has its tables recomputed.

        Raises:
            ModelLoadError: the folder, its files or an encoder's source are missing or unreadable.
        """
        ckpt = read_checkpoint(path)
        model = cls(ckpt.config, compute_bridge=False)
        own = model.state_dict()
        stale = {k for k in own if k.startswith("bridge_") and (k not in ckpt.tensors
                                                                 or ckpt.tensors[k].shape != own[k].shape)}
        missing, unexpected = model.load_state_dict({k: v for k, v in ckpt.tensors.items() if k not in stale},
                                                    strict=False)
        missing = [k for k in missing if (ckpt.has_encoders or not k.startswith("encoders.")) and k not in stale]
        if stale:
            model._compute_bridge()
        if missing or unexpected:
            raise ModelLoadError(f"checkpoint {ckpt.folder} does not match its config: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        model.encoders_tuned = ckpt.has_encoders and any(k.startswith("encoders.") for k in ckpt.tensors)
        return model.place(device or ckpt.config.device)
