"""The MERT objective: masking statistics, in-batch mixing, loss locality, gradients, overfitting one batch."""

from __future__ import annotations

import math

import pytest
import torch

from mert import Encoder, EncoderConfig, frame_lengths
from mert.pretrain import MERTObjective, block_mask, mix_in_batch, span_mask
from tests.helpers import BandEnergies, FrameStatsCodes, make_objective, music_like


# ----------------------------------------------------------------------------------------------------- masking
def test_span_mask_statistics_match_spec():
    g = torch.Generator().manual_seed(0)
    t = 374  # 5 s at 75 Hz
    fractions, starts = [], []
    for _ in range(200):
        m = span_mask(torch.tensor([t]), t, generator=g)[0]
        fractions.append(m.float().mean().item())
        runs = torch.diff(torch.cat([torch.tensor([0]), m.int(), torch.tensor([0])]))
        begin, end = (runs == 1).nonzero().flatten(), (runs == -1).nonzero().flatten()
        assert ((end - begin) >= 5).all(), "every masked run is at least one 5-frame span"
        starts.append(len(begin))
    mean = sum(fractions) / len(fractions)
    # 0.8 * 374 / 5 ~ 60 overlapping spans of 5 -> 1 - (1 - 5/370)^60 ~ 0.56 of frames (spec: "about 60%").
    assert 0.52 < mean < 0.62, mean
    assert max(fractions) - min(fractions) < 0.2


def test_span_mask_respects_padding_and_minimum():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([374, 100, 12, 3])
    m = span_mask(lengths, 374, generator=g)
    for i, n in enumerate(lengths.tolist()):
        assert not m[i, n:].any(), "padding is never masked"
    assert m[2].sum() >= 10  # 12 frames: int(0.8*12/5 + u) <= 2 -> the 2-span minimum
    assert m[3, :3].all()  # shorter than a span: mask what there is
    a = span_mask(lengths, 374, generator=torch.Generator().manual_seed(5))
    b = span_mask(lengths, 374, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not span_mask(lengths, 374, mask_prob=0.0).any()


@pytest.mark.parametrize("frame_rate", [75.0, 25.0])
def test_block_mask_statistics(frame_rate):
    block = round(0.4 * frame_rate)  # 30 frames at 75 Hz (conv family), 10 at 25 Hz (mel family)
    t = int(5 * frame_rate)
    g = torch.Generator().manual_seed(0)
    masks = torch.stack(
        [block_mask(torch.tensor([t]), t, mask_prob=0.6, block=block, generator=g)[0] for _ in range(400)]
    )
    # 400 draws x 13 blocks of Bernoulli(0.6): the masked fraction's standard error is about 0.007.
    assert abs(masks.float().mean().item() - 0.6) < 0.03
    blocks = masks[:, : (t // block) * block].reshape(400, -1, block)
    assert (blocks.all(-1) | ~blocks.any(-1)).all(), "every block is masked whole or not at all"
    per_block = blocks.any(-1).float().mean(0)
    assert (per_block - 0.6).abs().max() < 0.1, per_block  # every block position is equally likely
    assert not block_mask(torch.tensor([t]), t, mask_prob=0.0, block=block).any()
    assert block_mask(torch.tensor([t]), t, mask_prob=1.0, block=block).all()


def test_block_mask_padding_seeds_and_per_item_generators():
    lengths = torch.tensor([125, 37, 9, 0])
    m = block_mask(lengths, 125, mask_prob=0.6, block=10, generator=torch.Generator().manual_seed(3))
    for i, n in enumerate(lengths.tolist()):
        assert not m[i, n:].any(), "padding is never masked"
    a = block_mask(lengths, 125, mask_prob=0.6, block=10, generator=torch.Generator().manual_seed(5))
    b = block_mask(lengths, 125, mask_prob=0.6, block=10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # One generator per item: an item's mask is its own, whichever batch it is drawn in.
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    pair = block_mask(torch.tensor([125, 125]), 125, mask_prob=0.5, block=10, generator=gens([7, 8]))
    alone = block_mask(torch.tensor([125]), 125, mask_prob=0.5, block=10, generator=gens([8]))
    assert torch.equal(pair[1], alone[0])
    with pytest.raises(ValueError, match="block"):
        block_mask(lengths, 125, block=0)


def test_objective_block_masking_and_noise_replacement():
    obj = make_objective(mask_span_seconds=0.4, mask_prob=0.6, mix_prob=0.0)
    assert obj.mask_block_frames == 30  # 0.4 s at the tiny encoder's 75 Hz
    wav = music_like(24000 * 2, batch=2)
    out = obj(wav, sample_seeds=[1, 2])
    t = out.pred_mask.shape[1]
    runs = out.pred_mask[:, : (t // 30) * 30].reshape(2, -1, 30)
    assert (runs.all(-1) | ~runs.any(-1)).all()
    assert torch.isfinite(out.loss)
    again = obj(wav, sample_seeds=[1, 2])
    assert torch.equal(out.pred_mask, again.pred_mask)
    # Noise replacement: the encoder sees noise at the masked frames' samples and no mask_emb.
    noisy = make_objective(mask_span_seconds=0.4, mask_prob=0.6, mix_prob=0.0, mask_replace="noise")
    seen = {}
    noisy.encoder.register_forward_pre_hook(lambda m, args, kw: seen.update(x=args[0], kw=kw), with_kwargs=True)
    out = noisy(wav, sample_seeds=[1, 2])
    assert seen["kw"]["pred_mask"] is None
    hop = noisy.encoder.config.hop_length
    frame_of_sample = torch.arange(wav.shape[1]) // hop
    inside = frame_of_sample < t
    masked = torch.zeros_like(wav, dtype=torch.bool)
    masked[:, inside] = out.pred_mask[:, frame_of_sample[inside]]
    assert masked.any() and (~masked).any()
    assert torch.equal(seen["x"][~masked], wav[~masked])
    replaced = seen["x"][masked]
    assert abs(replaced.std().item() - 0.1) < 0.01 and not torch.equal(replaced, wav[masked])
    with pytest.raises(ValueError, match="mask_span_seconds"):
        make_objective(mask_span_seconds=0.0)
    with pytest.raises(ValueError, match="mask_replace"):
        make_objective(mask_replace="zeros")


# ----------------------------------------------------------------------------------------------------- mixing
def test_mixing_follows_spec():
    sr = 24000
    b, l = 4, 3 * sr
    clean = torch.stack([torch.full((l,), float(i + 1)) for i in range(b)])  # clip i is the constant i+1
    g = torch.Generator().manual_seed(0)
    noisy_clips, per_clip = 0, []
    for _ in range(100):
        mixed, segs = mix_in_batch(clean, sample_rate=sr, generator=g)
        assert torch.equal(clean[0], torch.full((l,), 1.0))  # input untouched
        touched = torch.zeros(b, l, dtype=torch.bool)
        for s in segs:
            assert 0.5 * sr <= s.length <= 1.0 * sr
            assert 0 <= s.start <= l - s.length
            touched[s.item, s.start : s.start + s.length] = True
        assert torch.equal(mixed[~touched], clean[~touched]), "samples outside the segments are unchanged"
        diff = (mixed - clean)[touched]
        for i in range(b):
            added = (mixed[i] - clean[i])[touched[i]]
            # Only other clips are mixed in: the added values are sums of constants j+1, j != i.
            assert not torch.isclose(added, torch.tensor(float(i + 1))).all() or added.numel() == 0
            counts = sum(1 for s in segs if s.item == i)
            assert counts in (0, 1, 2, 3)
            per_clip.append(counts)
            noisy_clips += counts > 0
        assert (diff > 0).all()  # gain 1.0, no scaling
    assert 0.4 < noisy_clips / (100 * b) < 0.6  # p = 0.5
    assert {1, 2, 3} <= set(per_clip)
    single, segs = mix_in_batch(clean[:1], sample_rate=sr, generator=g)
    assert segs == [] and torch.equal(single, clean[:1])  # a batch of one stays clean


def test_mixing_uses_only_valid_samples_of_other_clips():
    sr = 24000
    wav = torch.zeros(2, 2 * sr)
    wav[0, :sr] = 1.0
    wav[0, sr:] = 99.0  # padding of clip 0, must never be mixed in
    wav[1] = 2.0
    lengths = torch.tensor([sr, 2 * sr])
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        mixed, segs = mix_in_batch(wav, lengths, sample_rate=sr, prob=1.0, generator=g)
        assert (mixed[1] < 50).all()
        for s in (s for s in segs if s.item == 0):
            assert s.start + s.length <= sr  # inside clip 0's valid part


# ----------------------------------------------------------------------------------------------------- objective
def test_teachers_see_clean_audio_and_are_frozen():
    obj = make_objective(mix_prob=1.0).train()
    wav = music_like(48000, batch=3)
    out = obj(wav, generator=torch.Generator().manual_seed(0))
    assert out.segments, "mixing happened"
    assert torch.equal(obj.code_teacher.calls[-1], wav), "teacher received the clean audio"
    out.loss.backward()
    assert obj.encoder.frontend.convs[0].conv.weight.grad.abs().sum() > 0
    assert obj.encoder.transformer.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert obj.code_head.code_emb.grad is not None and obj.feature_head.linear.weight.grad is not None
    assert not obj.code_teacher.training and not obj.feature_teacher.training
    names = [n for n, _ in obj.named_parameters()] + list(obj.state_dict())
    assert not any("teacher" in n for n in names), "teachers are never optimised or saved"
    assert set(obj.teacher_settings()) == {"codes", "features"}


def test_loss_depends_only_on_masked_frames():
    obj = make_objective().eval()
    wav = music_like(36000, batch=2, seed=4)
    targets = obj.compute_targets(wav)
    t = frame_lengths(36000)
    assert targets["codes"].shape == (2, t, 2) and targets["features"].shape == (2, t, 8)
    with torch.no_grad():
        a = obj(wav, targets=targets, generator=torch.Generator().manual_seed(7))
        changed = {k: v.clone() for k, v in targets.items()}
        keep = a.pred_mask
        changed["codes"][~keep] = (changed["codes"][~keep] + 3) % 16
        changed["features"][~keep] += 5.0
        b = obj(wav, targets=changed, generator=torch.Generator().manual_seed(7))
        changed["codes"][keep] = (changed["codes"][keep] + 3) % 16
        c = obj(wav, targets=changed, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.loss_sum, b.loss_sum)
    assert not torch.equal(a.loss_sum, c.loss_sum)
    assert int(a.n_masked) == int(keep.sum()) > 0
    total = sum(a.terms[f"code_{i}"] for i in range(2)) + a.terms["features"] + 10 * a.terms["feature_penalty"]
    assert torch.allclose(a.loss_sum, total)
    assert torch.allclose(a.loss, a.loss_sum / a.n_masked)


def test_unmasked_weight_adds_the_losses_of_unmasked_frames():
    wav = music_like(36000, batch=2, seed=4)
    plain, both = make_objective().eval(), make_objective(unmasked_weight=0.5).eval()
    targets = plain.compute_targets(wav)
    with torch.no_grad():
        a = plain(wav, targets=targets, generator=torch.Generator().manual_seed(7))
        b = both(wav, targets=targets, generator=torch.Generator().manual_seed(7))
        # Changing only the unmasked frames' targets changes b's loss, not a's.
        changed = {k: v.clone() for k, v in targets.items()}
        changed["features"][~a.pred_mask] += 5.0
        c = both(wav, targets=changed, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.pred_mask, b.pred_mask) and "unmasked" not in a.terms
    assert float(b.terms["unmasked"]) > 0
    torch.testing.assert_close(b.loss_sum, a.loss_sum + 0.5 * b.terms["unmasked"])
    assert float(c.terms["unmasked"]) > float(b.terms["unmasked"]) + 1.0
    with pytest.raises(ValueError, match="unmasked_weight"):
        make_objective(unmasked_weight=-1.0)


def test_frame_target_norm_scores_the_spectral_shape_not_its_offset_or_scale():
    wav = music_like(36000, batch=2, seed=5)
    raw, normed = make_objective().eval(), make_objective(feature_target_norm="frame").eval()
    targets = raw.compute_targets(wav)
    shifted = {k: v.clone() for k, v in targets.items()}
    shifted["features"] = shifted["features"] * 3.0 - 7.0  # every frame: same shape, other offset and scale
    with torch.no_grad():
        g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        a, b = normed(wav, targets=targets, generator=g()), normed(wav, targets=shifted, generator=g())
        c, d = raw(wav, targets=targets, generator=g()), raw(wav, targets=shifted, generator=g())
    torch.testing.assert_close(a.terms["features"], b.terms["features"], rtol=1e-4, atol=1e-4)
    assert float(d.terms["features"]) > 5 * float(c.terms["features"])  # raw targets: the offset is scored
    # What the head is asked for: each masked frame standardised across its bins.
    f = targets["features"][a.pred_mask]
    z = (f - f.mean(-1, keepdim=True)) / (f.std(-1, keepdim=True) + 1e-5)
    pred = normed.feature_head(normed.encoder(wav, pred_mask=a.pred_mask).last_hidden_state[a.pred_mask])
    torch.testing.assert_close(a.terms["features"], (pred - z).pow(2).mean(-1).sum(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="feature_target_norm"):
        make_objective(feature_target_norm="bin")


def test_cached_targets_replace_the_teachers_role_by_role():
    """Cached targets are what the heads are scored against and their teachers do not run: the teachers' own
    targets give exactly the on-the-fly step; other cached codes (features) change the code (feature) terms and
    nothing else, while the role left out is computed by its teacher. (Which frames' targets count is
    test_loss_depends_only_on_masked_frames.)"""
    obj = make_objective().eval()
    codes_teacher, features_teacher = obj.code_teacher, obj.feature_teacher
    wav = music_like(30000, batch=2, seed=2)
    cached = obj.compute_targets(wav)
    other = {"codes": (cached["codes"] + 5) % 16, "features": cached["features"] + 1.0}

    def step(targets=None):
        codes_teacher.calls.clear()
        features_teacher.calls.clear()
        with torch.no_grad():
            out = obj(wav, targets=targets, generator=torch.Generator().manual_seed(1))
        return out, (len(codes_teacher.calls), len(features_teacher.calls))

    fly, ran = step()
    assert ran == (1, 1)
    same, ran = step(cached)
    assert ran == (0, 0)  # both roles cached: no teacher ran
    assert torch.equal(same.loss_sum, fly.loss_sum) and torch.equal(same.correct, fly.correct)
    assert same.terms.keys() == fly.terms.keys() and all(torch.equal(same.terms[k], fly.terms[k]) for k in fly.terms)
    code_terms = ["code_0", "code_1"]
    for role, changed, unchanged, teacher_ran in (
        ("codes", code_terms, ["features", "feature_penalty"], (0, 1)),
        ("features", ["features"], [*code_terms, "feature_penalty"], (1, 0)),
    ):
        out, ran = step({role: other[role]})
        assert ran == teacher_ran, role  # only the role left out is computed
        assert all(torch.equal(out.terms[k], fly.terms[k]) for k in unchanged), role
        assert all(not torch.isclose(out.terms[k], fly.terms[k]) for k in changed), role
        assert not torch.isclose(out.loss_sum, fly.loss_sum)
        if role == "codes":
            assert not torch.equal(out.correct, fly.correct)  # accuracy is counted against the cached codes


def test_padded_batch_never_predicts_padding():
    """No padded frame is masked, and neither the padding's samples nor its targets change the step."""
    obj = make_objective().eval()
    wav = music_like(48000, batch=2)
    lengths = torch.tensor([48000, 20000])
    t1 = frame_lengths(20000)
    targets = obj.compute_targets(wav, lengths)
    junk_wav, junk = wav.clone(), {k: v.clone() for k, v in targets.items()}
    junk_wav[1, 20000:] = 0.9
    junk["codes"][1, t1:] = 15
    junk["features"][1, t1:] = 100.0
    with torch.no_grad():
        out = obj(wav, lengths, targets=targets, generator=torch.Generator().manual_seed(0))
        again = obj(junk_wav, lengths, targets=junk, generator=torch.Generator().manual_seed(0))
    assert not out.pred_mask[1, t1:].any() and out.pred_mask[1, :t1].any()
    assert torch.equal(out.loss_sum, again.loss_sum) and torch.equal(out.correct, again.correct)
    assert out.accuracy.shape == (2,) and torch.equal(out.accuracy, out.correct.float() / int(out.pred_mask.sum()))


def test_objective_rejects_bad_setups():
    enc = Encoder(EncoderConfig.preset("tiny"))
    with pytest.raises(ValueError, match="at least one teacher"):
        MERTObjective(enc)
    with pytest.raises(ValueError, match="must produce codes"):
        MERTObjective(enc, code_teacher=BandEnergies())
    obj = MERTObjective(enc, FrameStatsCodes())
    bad = {"codes": torch.zeros(1, 5, 2, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"codes targets must have shape \(1, 74"):
        obj(music_like(24000), targets=bad)
    too_big = {"codes": torch.full((1, 74, 2), 99, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"code targets must lie in \[0, 16\)"):
        obj(music_like(24000), targets=too_big)


def test_tiny_objective_overfits_one_batch():
    obj = make_objective(mix_prob=0.0).train()
    wav = music_like(24000 * 2, batch=4, seed=9)
    targets = obj.compute_targets(wav)
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    losses = []
    for step in range(50):
        out = obj(wav, targets=targets, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_frontend_lr_mult_gives_the_front_end_its_own_learning_rate():
    """Adam ignores a gradient scale, so the front end is slowed by its own (lower) learning rate."""
    import functools

    pytest.importorskip("lightning")
    from mert.lightning.module import PretrainModule, linear_warmup_decay

    obj = make_objective()
    opt_factory = functools.partial(torch.optim.AdamW, lr=1e-3)
    sched = functools.partial(linear_warmup_decay, warmup_steps=0, total_steps=10)
    plain = PretrainModule(obj, opt_factory, sched).configure_optimizers()["optimizer"]
    assert len(plain.param_groups) == 1
    conf = PretrainModule(obj, opt_factory, sched, frontend_lr_mult=0.1).configure_optimizers()
    opt, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    rest, front = opt.param_groups
    assert {id(p) for p in front["params"]} == {id(p) for p in obj.encoder.frontend.parameters()}
    assert len(rest["params"]) + len(front["params"]) == len([p for p in obj.parameters() if p.requires_grad])
    assert front["lr"] == pytest.approx(1e-4) and rest["lr"] == pytest.approx(1e-3)
    scheduler.step()  # the schedule scales each group from its own peak
    assert opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="frontend_lr_mult"):
        PretrainModule(obj, opt_factory, frontend_lr_mult=-1)
    # The mel family's spectrogram has no weights: its learned front end is the subsampler.
    torch.manual_seed(0)
    mel = torch.nn.Module()
    mel.encoder, mel.head = Encoder(EncoderConfig.preset("conformer_tiny")), torch.nn.Linear(4, 4)
    module = PretrainModule(mel, opt_factory, frontend_lr_mult=0.1)
    rest, front = module.configure_optimizers()["optimizer"].param_groups
    assert {id(p) for p in front["params"]} == {id(p) for p in mel.encoder.subsampler.parameters()} != set()
    assert front["lr"] == pytest.approx(1e-4)
    assert len(rest["params"]) + len(front["params"]) == len(list(mel.parameters()))


def test_norm_clipping_goes_through_the_sharded_model_under_fsdp():
    """Lightning's FSDP precision plugin refuses norm clipping (every experiment clips by norm), so trainer=fsdp
    could not train: the module clips through the root FSDP module's clip_grad_norm_, which sees the whole norm
    of the sharded gradients. FSDP itself needs GPUs (benchmarks/gpu_check.py runs a real step)."""
    import functools
    from types import SimpleNamespace

    pytest.importorskip("lightning")
    from lightning.pytorch.plugins.precision import FSDPPrecision, Precision
    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    from mert.lightning.module import PretrainModule

    module = PretrainModule(make_objective(), functools.partial(torch.optim.AdamW, lr=1e-3))
    calls = []
    fsdp = FSDPStrategy()
    fsdp.model = SimpleNamespace(clip_grad_norm_=calls.append)
    module.trainer = SimpleNamespace(
        strategy=fsdp, precision_plugin=FSDPPrecision("32-true"), gradient_clip_val=None, gradient_clip_algorithm=None
    )
    module.configure_gradient_clipping(None, gradient_clip_val=10.0, gradient_clip_algorithm="norm")
    assert calls == [10.0]
    # Elsewhere, Lightning's own clipping: the global gradient norm ends at the threshold.
    for p in module.parameters():
        p.grad = torch.full_like(p, 3.0) if p.requires_grad else None
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module.trainer = SimpleNamespace(
        strategy=SingleDeviceStrategy("cpu"),
        precision_plugin=Precision(),
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
    )
    module.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in opt.param_groups[0]["params"]]))
    assert norm == pytest.approx(1.0, rel=1e-4)
