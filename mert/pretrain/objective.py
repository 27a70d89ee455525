"""`MERTObjective`: masked prediction of teacher targets from a noise-mixed input (MERT-v1 targets and loss; MERT-v1
in-batch mixing).

Shape legend:
    b  batch
    l  samples (at the encoder's sample rate)
    t  frames (75 Hz)
    n  masked frames in the batch
    d  model width
    c  front-end channels
    k  codebooks
    v  codebook size
    f  feature-teacher bins (336 CQT bins)

One step: teachers read the CLEAN audio -> span (or block) mask on the frame grid -> in-batch noise mixing of the input
(training only) -> encoder with masked frames replaced by ``mask_emb`` -> heads on the masked frames only ->
per-term loss SUMS and the masked-frame count. The trainer divides by the masked-frame count summed over all
ranks, so every masked frame weighs the same whatever its rank (MERT-v1 targets and loss); ``PretrainOutput.loss`` is
the single-process value of that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.encoder import Encoder
from mert.pretrain import health
from mert.pretrain.heads import CodeHead, FeatureHead
from mert.pretrain.masking import block_mask, span_mask
from mert.pretrain.mixing import MixedSegment, mix_in_batch
from mert.targets.base import Teacher

__all__ = ["MERTObjective", "PretrainOutput"]


@dataclass
class PretrainOutput:
    """Loss sums over the masked frames of one batch, and what to log.

    Attributes:
        loss_sum: weighted total, summed over masked frames (divide by the global masked-frame count).
        n_masked: number of masked (predicted) frames, a scalar tensor.
        terms: unweighted per-term sums: ``code_0..code_{k-1}`` (cross-entropy), ``features`` (MSE averaged
            over bins), ``feature_penalty`` (each clip's mean squared front-end feature times its masked frames).
        correct: ``(k,)`` masked frames whose arg-max code is right, per codebook (None without a code teacher).
        pred_mask: ``(b, t)`` the frames that were masked.
        segments: the noise segments mixed into the input.
        stats: training-health statistics (detached 0-dim float32 tensors, :mod:`mert.pretrain.health`), only
            when the forward was asked for them with ``collect_stats=True``; empty otherwise.
    """

    loss_sum: Tensor
    n_masked: Tensor
    terms: dict[str, Tensor]
    correct: Tensor | None
    pred_mask: Tensor
    segments: list[MixedSegment] = field(default_factory=list)
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> Tensor:
        """Loss per masked frame of this batch alone."""
        return self.loss_sum / self.n_masked.clamp(min=1)

    @property
    def accuracy(self) -> Tensor | None:
        """``(k,)`` masked-frame accuracy per codebook."""
        return None if self.correct is None else self.correct.float() / self.n_masked.clamp(min=1)


class MERTObjective(nn.Module):
    """The MERT pretraining objective around an :class:`~mert.Encoder`.

    Args:
        encoder: the model being trained.
        code_teacher: a teacher with ``kind == "codes"`` (EnCodec RVQ, random projection, k-means), or None.
        feature_teacher: a teacher with ``kind == "features"`` (the CQT), or None.
        final_dim: code-head projection size per codebook (MERT-v1 targets and loss: 64 for 95M, 128 for 330M).
        logit_temperature: cosine-logit temperature (0.1).
        mask_prob, mask_span_frames, min_spans: span masking (0.8, 5, 2).
        mask_span_seconds: None for MERT's span masking; a length in seconds (MusicFM/MuQ: 0.4) for block
            masking instead: the frame axis is cut into blocks of ``round(mask_span_seconds * frame_rate)``
            frames and each is masked with probability ``mask_prob`` (MusicFM/MuQ: 0.6), on any frame grid.
        mask_replace: what the encoder sees at masked frames: ``"embedding"`` (MERT, HuBERT: the front end's
            output replaced by the learned ``mask_emb``) or ``"noise"`` (MusicFM: the masked frames' input
            samples replaced by Gaussian noise of std ``mask_noise_std`` before the front end; the teachers
            still read the clean audio).
        mask_noise_std: std of that noise (0.1).
        mix_prob, mix_max_segments, mix_min_seconds, mix_max_seconds: in-batch noise mixing (0.5, 3, 0.5, 1.0);
            applied in training mode only.
        code_weight: weight of each codebook's cross-entropy (1.0; the codebooks are summed).
        feature_weight: weight of the feature-teacher MSE (1.0).
        feature_penalty_weight: weight of the mean squared front-end feature (10).
        unmasked_weight: weight of the same code and feature losses on the valid frames that were NOT masked
            (HuBERT's ``pred_nomask_weight``; 0 in MERT). Summed over those frames and normalised
            by the masked-frame count like the rest, so 0.5 with ~60 % of frames masked adds about a third.
        feature_target_norm: "none" (regress the teacher's values, as MERT does) or "frame": each target frame is
            standardised across its bins first (zero mean, unit variance; MAE's normalised-pixel loss). A
            log-CQT has a large common offset (mean -2.5 at floor 0.01); regressing it raw, the first hundred
            steps push every frame's output the same way and the representation collapses to one vector, so
            the head predicts the average spectrum whatever the input
            (``docs/notes/2026-12-01-small-cpu-recipe.md``, "Why the small model learnt almost nothing").

    Teachers are frozen and kept outside the module tree: they are not in ``state_dict()``, ``parameters()``
    or any optimiser, yet ``.to(device)`` moves them with the objective.
    """

    def __init__(
        self,
        encoder: Encoder,
        code_teacher: Teacher | None = None,
        feature_teacher: Teacher | None = None,
        *,
        final_dim: int = 64,
        logit_temperature: float = 0.1,
        mask_prob: float = 0.8,
        mask_span_frames: int = 5,
        min_spans: int = 2,
        mask_span_seconds: float | None = None,
        mask_replace: str = "embedding",
        mask_noise_std: float = 0.1,
        mix_prob: float = 0.5,
        mix_max_segments: int = 3,
        mix_min_seconds: float = 0.5,
        mix_max_seconds: float = 1.0,
        code_weight: float = 1.0,
        feature_weight: float = 1.0,
        feature_penalty_weight: float = 10.0,
        unmasked_weight: float = 0.0,
        feature_target_norm: str = "none",
    ):
        super().__init__()
        if code_teacher is None and feature_teacher is None:
            raise ValueError("MERTObjective needs at least one teacher (code_teacher and/or feature_teacher)")
        for name, teacher, kind in (
            ("code_teacher", code_teacher, "codes"),
            ("feature_teacher", feature_teacher, "features"),
        ):
            if teacher is None:
                continue
            if teacher.kind != kind:
                raise ValueError(f"{name} must produce {kind}, but {type(teacher).__name__} produces {teacher.kind}")
            grid = (teacher.sample_rate, teacher.conv_kernel, teacher.conv_stride)
            if grid != (encoder.sample_rate, encoder.config.frame_kernel, encoder.config.frame_stride):
                raise ValueError(
                    f"{name} {type(teacher).__name__} works at {teacher.sample_rate} Hz on another frame grid than "
                    f"the encoder ({encoder.sample_rate} Hz, strides {encoder.config.frame_stride})"
                )
        self.encoder = encoder
        self._teachers: dict[str, Teacher] = {}
        if code_teacher is not None:
            self._teachers["codes"] = code_teacher.freeze()
        if feature_teacher is not None:
            self._teachers["features"] = feature_teacher.freeze()
        d = encoder.hidden_size
        self.code_head = (
            CodeHead(
                d,
                code_teacher.num_codebooks,
                code_teacher.codebook_size,
                final_dim=final_dim,
                temperature=logit_temperature,
            )
            if code_teacher is not None
            else None
        )
        self.feature_head = FeatureHead(d, feature_teacher.dim) if feature_teacher is not None else None
        self.mask_prob, self.mask_span_frames, self.min_spans = mask_prob, mask_span_frames, min_spans
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        self.mask_block_frames: int | None = None
        if mask_span_seconds is not None:
            if not mask_span_seconds > 0:
                raise ValueError(
                    f"mask_span_seconds must be > 0 seconds (or null for span masking), got {mask_span_seconds}"
                )
            self.mask_block_frames = max(1, round(float(mask_span_seconds) * encoder.config.frame_rate))
        self.mask_span_seconds = mask_span_seconds
        if mask_replace not in ("embedding", "noise"):
            raise ValueError(f"mask_replace must be 'embedding' or 'noise', got {mask_replace!r}")
        if mask_noise_std < 0:
            raise ValueError(f"mask_noise_std must be >= 0, got {mask_noise_std}")
        self.mask_replace, self.mask_noise_std = mask_replace, float(mask_noise_std)
        self.mix = dict(
            prob=mix_prob, max_segments=mix_max_segments, min_seconds=mix_min_seconds, max_seconds=mix_max_seconds
        )
        self.code_weight, self.feature_weight = code_weight, feature_weight
        self.feature_penalty_weight = feature_penalty_weight
        if unmasked_weight < 0:
            raise ValueError(f"unmasked_weight must be >= 0, got {unmasked_weight}")
        self.unmasked_weight = unmasked_weight
        if feature_target_norm not in ("none", "frame"):
            raise ValueError(f"feature_target_norm must be 'none' or 'frame', got {feature_target_norm!r}")
        self.feature_target_norm = feature_target_norm

    @property
    def code_teacher(self) -> Teacher | None:
        return self._teachers.get("codes")

    @property
    def feature_teacher(self) -> Teacher | None:
        return self._teachers.get("features")

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MERTObjective:
        # Teachers live outside the module tree (so they are never saved or optimised) but must follow
        # .to(device) / .cuda() like everything else.
        super()._apply(fn, recurse)
        for teacher in self._teachers.values():
            teacher._apply(fn, recurse)
        return self

    def compile(self, enabled: bool = True, *, mode: str | None = None, dynamic: bool | None = None) -> MERTObjective:
        """Compile the student's hot path with :func:`torch.compile`, in place; returns ``self``.

        The encoder's network (:meth:`mert.Encoder.compile`) and the prediction heads are compiled; masking,
        mixing, the teachers (frozen, under ``no_grad``) and the loss bookkeeping stay eager. Nothing is
        wrapped, so ``state_dict()`` keys do not change. The heads see a different number of masked frames every
        step, so they compile with dynamic shapes unless ``dynamic=False``.
        """
        self.encoder.compile(enabled, mode=mode, dynamic=dynamic)
        self._compile_options = dict(mode=mode, dynamic=dynamic) if enabled else None
        self._compile_heads()
        return self

    def _compile_heads(self) -> None:
        options = self.__dict__.get("_compile_options")
        for head in (self.code_head, self.feature_head):
            if head is None:
                continue
            if options is not None:  # dynamic from the start: the masked-frame count changes every step
                dynamic = True if options["dynamic"] is None else options["dynamic"]
                head.compile(mode=options["mode"], dynamic=dynamic)
            else:
                head._compiled_call_impl = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # nn.Module drops compiled forwards when pickled (a spawned DDP rank gets this module by pickle).
        super().__setstate__(state)
        self._compile_heads()

    def teacher_settings(self) -> dict[str, Any]:
        """JSON-able description of the teachers, for checkpoints' ``meta.json``."""
        return {role: t.settings() for role, t in self._teachers.items()}

    def empty_output(self, device: torch.device | str = "cpu", *, collect_stats: bool = False) -> PretrainOutput:
        """A zero :class:`PretrainOutput` with the same terms as a real one, its loss tied to every trainable
        parameter: what a rank whose micro-batch held no readable audio contributes, so that distributed
        ranks still make the same collective calls and gradient reductions. With ``collect_stats`` its
        ``stats`` have the keys of a real forward's (values from no frames: zeros or NaN)."""
        zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        terms = {}
        correct = None
        if self.code_head is not None:
            terms.update({f"code_{i}": zero.detach() for i in range(self.code_head.num_codebooks)})
            correct = torch.zeros(self.code_head.num_codebooks, dtype=torch.long, device=device)
        if self.feature_head is not None:
            terms["features"] = zero.detach()
        if self.feature_penalty_weight:
            terms["feature_penalty"] = zero.detach()
        if self.unmasked_weight:
            terms["unmasked"] = zero.detach()
        empty_mask = torch.zeros(0, 0, dtype=torch.bool, device=device)
        n_zero = torch.zeros((), dtype=torch.long, device=device)
        stats = self._empty_stats(device) if collect_stats else {}
        return PretrainOutput(zero, n_zero, terms, correct, empty_mask, stats=stats)

    def _empty_stats(self, device: torch.device | str) -> dict[str, Tensor]:
        # The health functions on zero frames: the same keys as a real forward without a second list of names.
        none = torch.zeros(1, 0, 1, device=device)  # (b, t, d) with t = 0
        layers = [none] * self.encoder.config.num_hidden_states
        stats = health.collect_encoder_stats(none, layers, torch.zeros(1, 0, dtype=torch.bool, device=device))
        if self._head_is_trained("codes"):
            k, v = self.code_head.num_codebooks, self.code_head.codebook_size
            codes = torch.zeros(0, k, dtype=torch.long, device=device)
            stats.update(health.code_stats(torch.zeros(0, k, v, device=device), codes))
        if self._head_is_trained("features"):
            stats.update(health.feature_stats(torch.zeros(0, 1, device=device), torch.zeros(0, 1, device=device)))
        return stats

    def _head_is_trained(self, role: str) -> bool:
        # A head whose loss weight is 0 (the teacher ablations: codes only, CQT only) gets no gradient: its
        # statistics describe a frozen random head, and the prediction-collapse rule would warn about it.
        if role == "codes":
            return self.code_head is not None and self.code_weight != 0
        return self.feature_head is not None and self.feature_weight != 0

    def draw_mask(
        self, frame_lens: Tensor, num_frames: int, generator: torch.Generator | Sequence[torch.Generator] | None
    ) -> Tensor:
        """``(b,)`` valid frames -> ``pred_mask (b, t)``: block masking when ``mask_span_seconds`` is set, else
        MERT's span masking."""
        if self.mask_block_frames is not None:
            return block_mask(
                frame_lens, num_frames, mask_prob=self.mask_prob, block=self.mask_block_frames, generator=generator
            )
        return span_mask(
            frame_lens,
            num_frames,
            mask_prob=self.mask_prob,
            span=self.mask_span_frames,
            min_spans=self.min_spans,
            generator=generator,
        )

    def _noise_masked_frames(self, x: Tensor, pred_mask: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(b, l)`` input with the samples of masked frames (frame ``i``: samples ``[i*hop, (i+1)*hop)``)
        replaced by N(0, mask_noise_std^2) noise."""
        hop = self.encoder.config.hop_length
        b, l = x.shape
        per_sample = pred_mask.repeat_interleave(hop, dim=1)[:, :l]  # (b, t*hop) -> (b, <= l)
        if per_sample.shape[1] < l:
            per_sample = F.pad(per_sample, (0, l - per_sample.shape[1]), value=False)
        noise = torch.randn(b, l, generator=generator).to(device=x.device, dtype=x.dtype) * self.mask_noise_std
        return torch.where(per_sample, noise, x)

    @torch.no_grad()
    def compute_targets(self, wav: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """Teacher targets of clean audio: ``{"codes": (b, t, k) int64, "features": (b, t, f)}``."""
        return {role: teacher(wav, lengths) for role, teacher in self._teachers.items()}

    def forward(
        self,
        wav: Tensor,
        lengths: Tensor | None = None,
        *,
        targets: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        sample_seeds: Sequence[int] | None = None,
        collect_stats: bool = False,
    ) -> PretrainOutput:
        """One masked-prediction step.

        Args:
            wav: ``(b, l)`` clean audio at the encoder's sample rate, right-padded.
            lengths: ``(b,)`` valid samples, or None when all are full.
            targets: precomputed (cached) targets with the keys of :meth:`compute_targets`; missing ones are
                computed by the teachers on the fly.
            generator: CPU generator driving masking and mixing (reproducible steps).
            sample_seeds: one seed per item for its mask, so masks follow the samples rather than the batch
                composition (a global batch split over ranks is masked as in one process).
            collect_stats: also compute training-health statistics (:mod:`mert.pretrain.health`) from the
                tensors this forward holds anyway, into ``PretrainOutput.stats``; no extra forward pass.
        Returns:
            :class:`PretrainOutput` with loss sums over the masked frames.
        """
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got {tuple(wav.shape)}")
        b, l = wav.shape
        enc = self.encoder
        full = lengths is None
        lengths = torch.full((b,), l, dtype=torch.long) if lengths is None else lengths.long().cpu()
        t = int(enc.frame_lengths(l))
        frame_lens = enc.frame_lengths(lengths)

        given = targets or {}
        missing = [role for role in self._teachers if role not in given]
        computed = {role: self._teachers[role](wav, None if full else lengths.to(wav.device)) for role in missing}
        tg = {**given, **computed}
        if self.feature_target_norm == "frame" and "features" in tg:
            f = tg["features"].float()
            # Padded frames are all zeros: their std is 0 and the eps keeps them finite (they are never scored).
            tg["features"] = (f - f.mean(-1, keepdim=True)) / (f.std(-1, keepdim=True) + 1e-5)
        for role, value in tg.items():
            if value.shape[:2] != (b, t):
                raise ValueError(
                    f"{role} targets must have shape ({b}, {t}, ...) on the encoder's frame grid, "
                    f"got {tuple(value.shape)}"
                )

        mask_gen = generator if sample_seeds is None else [torch.Generator().manual_seed(int(s)) for s in sample_seeds]
        pred_mask = self.draw_mask(frame_lens, t, mask_gen).to(wav.device)
        x, segments = wav, []
        if self.training and self.mix["prob"] > 0:
            x, segments = mix_in_batch(
                wav, None if full else lengths, sample_rate=enc.sample_rate, generator=generator, **self.mix
            )
        enc_mask: Tensor | None = pred_mask
        if self.mask_replace == "noise":
            x, enc_mask = self._noise_masked_frames(x, pred_mask, generator), None

        out = enc(x, None if full else lengths, sample_rate=enc.sample_rate, pred_mask=enc_mask)
        stats: dict[str, Tensor] = {}
        if collect_stats:
            stats.update(health.collect_encoder_stats(out.features, out.hidden_states, ~out.padding_mask))
        h = out.last_hidden_state[pred_mask]  # (n, d)
        n_masked = pred_mask.sum()
        terms: dict[str, Tensor] = {}
        total = h.new_zeros((), dtype=torch.float32)
        correct = None
        if self.code_head is not None:
            codes = tg["codes"][pred_mask]  # (n, k)
            v = self.code_head.codebook_size
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= v):
                raise ValueError(f"code targets must lie in [0, {v}), got [{int(codes.min())}, {int(codes.max())}]")
            logits = self.code_head(h)  # (n, k, v)
            ce = F.cross_entropy(
                rearrange(logits, "n k v -> (n k) v"), rearrange(codes, "n k -> (n k)"), reduction="none"
            )
            ce = rearrange(ce, "(n k) -> n k", k=self.code_head.num_codebooks).sum(0)  # (k,)
            terms.update({f"code_{i}": ce[i] for i in range(ce.shape[0])})
            total = total + self.code_weight * ce.sum()
            correct = (logits.argmax(-1) == codes).sum(0)
            if collect_stats and self._head_is_trained("codes"):
                stats.update(health.code_stats(logits, codes))
        if self.feature_head is not None:
            pred = self.feature_head(h).float()  # (n, f)
            mse = (pred - tg["features"][pred_mask].float()).pow(2).mean(-1).sum()
            terms["features"] = mse
            if collect_stats and self._head_is_trained("features"):  # against the very target the loss regresses
                stats.update(health.feature_stats(pred, tg["features"][pred_mask]))
            total = total + self.feature_weight * mse
        if self.unmasked_weight:
            # The unmasked frames' outputs are what a probe reads at inference (no masks there); without a
            # loss on them nothing ties them to the targets.
            keep = ~pred_mask & ~out.padding_mask
            hu = out.last_hidden_state[keep]  # (n', d)
            un = hu.new_zeros((), dtype=torch.float32)
            if self.code_head is not None and hu.shape[0]:
                codes_u = tg["codes"][keep]
                un = un + self.code_weight * F.cross_entropy(
                    rearrange(self.code_head(hu), "n k v -> (n k) v"),
                    rearrange(codes_u, "n k -> (n k)"),
                    reduction="sum",
                )
            if self.feature_head is not None and hu.shape[0]:
                mse_u = (self.feature_head(hu).float() - tg["features"][keep].float()).pow(2).mean(-1).sum()
                un = un + self.feature_weight * mse_u
            terms["unmasked"] = un
            total = total + self.unmasked_weight * un
        if self.feature_penalty_weight:
            # fairseq HuBERT: mean squared front-end feature, counted once per masked frame. The mean is each
            # clip's own (over its valid frames), not the batch's: a sum over clips does not depend on how a
            # global batch is split into ranks or micro-batches, so DDP gives the one-process loss.
            valid = ~out.padding_mask  # (b, t)
            sq = out.features.float().pow(2).mean(-1).masked_fill(~valid, 0.0)  # (b, t)
            per_clip = sq.sum(1) / valid.sum(1).clamp(min=1)  # (b,)
            pen = (per_clip * pred_mask.sum(1)).sum()
            terms["feature_penalty"] = pen
            total = total + self.feature_penalty_weight * pen
        return PretrainOutput(total, n_masked, terms, correct, pred_mask, segments, stats)
