"""FAVOR slot synchronisation: exact placement, padding, masks, modality mixes, errors."""

import pytest
import torch

from av_model.sync import frames_per_slot, synchronise

F = 25  # 50 Hz audio / 2 fps


def make_video(t: int, nv: int, dv: int, offset: float = 0.0) -> torch.Tensor:
    """Distinct positive value per (frame, token, dim); zeros in the output mean padding."""
    return torch.arange(1, t * nv * dv + 1, dtype=torch.float32).view(t, nv, dv) + offset


def make_audio(a: int, da: int, offset: float = 1000.0) -> torch.Tensor:
    return torch.arange(1, a * da + 1, dtype=torch.float32).view(a, da) + offset


def expected_mask(s: int, seq: int, video_slots: int, nv: int, n_audio: int) -> torch.Tensor:
    """Reference token mask built slot by slot (independent of the vectorised code)."""
    mask = torch.zeros(s, seq, dtype=torch.bool)
    for k in range(s):
        if k < video_slots:
            mask[k, :nv] = True
        real = max(0, min(F, n_audio - k * F))
        mask[k, :real] = True
    return mask


def test_frames_per_slot():
    assert frames_per_slot(2, 50) == 25
    assert frames_per_slot(1, 50) == 50
    with pytest.raises(ValueError, match=r"audio_rate \(50\).*fps \(3\)"):
        frames_per_slot(3, 50)
    with pytest.raises(ValueError):
        frames_per_slot(100, 50)


@pytest.mark.parametrize("nv", [4, 30])  # Nv < F and Nv > F
def test_placement_and_masks(nv):
    dv, da, t = 3, 2, 3
    v, a = make_video(t, nv, dv), make_audio(3 * F, da)
    out = synchronise([v], [a])
    seq = max(nv, F)
    assert out.features.shape == (1, 3, seq, dv + da)
    for k in range(t):
        assert torch.equal(out.features[0, k, :nv, :dv], v[k])
        assert torch.equal(out.features[0, k, :F, dv:], a[k * F:(k + 1) * F])
        assert not out.features[0, k, nv:, :dv].any()
        assert not out.features[0, k, F:, dv:].any()
    assert torch.equal(out.token_mask[0], expected_mask(3, seq, t, nv, 3 * F))
    assert out.slot_mask.tolist() == [[True, True, True]]
    assert out.num_slots.tolist() == [3]
    assert out.has_video.tolist() == [True] and out.has_audio.tolist() == [True]


def test_last_slot_partial_audio_is_zero_padded_and_masked():
    v, a = make_video(3, 2, 3), make_audio(2 * F + 7, 2)
    out = synchronise([v], [a])
    assert out.num_slots.tolist() == [3]
    assert torch.equal(out.features[0, 2, :7, 3:], a[2 * F:])
    assert not out.features[0, 2, 7:, 3:].any()
    assert out.token_mask[0, 2].tolist() == [True] * 7 + [False] * (F - 7)


def test_video_longer_than_audio():
    v, a = make_video(5, 8, 3), make_audio(F + 3, 2)  # 2 audio slots, 5 video slots
    out = synchronise([v], [a])
    assert out.num_slots.tolist() == [5] and out.features.shape[1] == 5
    assert torch.equal(out.features[0, 4, :8, :3], v[4])  # video never truncated
    assert not out.features[0, 2:, :, 3:].any()
    # Slot 1: 3 real audio frames but 8 visual tokens; the mask is their union.
    assert out.token_mask[0, 1].tolist() == [True] * 8 + [False] * (F - 8)
    assert torch.equal(out.token_mask[0], expected_mask(5, F, 5, 8, F + 3))


def test_audio_longer_than_video():
    v, a = make_video(2, 2, 3), make_audio(4 * F + 1, 2)  # 5 audio slots, 2 video slots
    out = synchronise([v], [a])
    assert out.num_slots.tolist() == [5]
    assert torch.equal(out.features[0, 4, :1, 3:], a[4 * F:])  # audio never truncated
    assert not out.features[0, 2:, :, :3].any()
    assert torch.equal(out.token_mask[0], expected_mask(5, F, 2, 2, 4 * F + 1))


def test_audio_only_and_video_only_samples():
    a, v = make_audio(2 * F + 1, 2), make_video(4, 2, 3)
    out = synchronise([None, v], [a, None])
    assert out.features.shape == (2, 4, F, 5)
    assert out.num_slots.tolist() == [3, 4]
    assert out.has_video.tolist() == [False, True]
    assert out.has_audio.tolist() == [True, False]
    assert not out.features[0, :, :, :3].any() and not out.features[1, :, :, 3:].any()
    assert torch.equal(out.features[0, 2, 0, 3:], a[2 * F])
    assert torch.equal(out.token_mask[0], expected_mask(4, F, 0, 2, 2 * F + 1))
    assert torch.equal(out.token_mask[1], expected_mask(4, F, 4, 2, 0))
    assert out.slot_mask.tolist() == [[True, True, True, False], [True] * 4]


def test_image_is_repeated_over_the_audio():
    img, a = make_video(1, 2, 3), make_audio(3 * F - 5, 2)
    out = synchronise([img, img], [a, None], image=[True, True])
    assert out.num_slots.tolist() == [3, 1]
    for k in range(3):
        assert torch.equal(out.features[0, k, :2, :3], img[0])
    assert torch.equal(out.features[1, 0, :2, :3], img[0])
    assert not out.features[1, 1:].any()
    assert torch.equal(out.token_mask[0], expected_mask(3, F, 3, 2, 3 * F - 5))
    assert out.slot_mask.tolist() == [[True] * 3, [True, False, False]]
    with pytest.raises(ValueError, match="single frame"):
        synchronise([make_video(2, 2, 3)], [a], image=[True])


def test_mixed_batch_pads_slots():
    v1, a1 = make_video(2, 2, 3), make_audio(2 * F, 2)
    v2, a2 = make_video(6, 2, 3, offset=500.0), make_audio(6 * F, 2)
    out = synchronise([v1, v2], [a1, a2])
    assert out.features.shape == (2, 6, F, 5)
    assert out.num_slots.tolist() == [2, 6]
    assert out.slot_mask.tolist() == [[True] * 2 + [False] * 4, [True] * 6]
    assert not out.features[0, 2:].any() and not out.token_mask[0, 2:].any()
    assert torch.equal(out.features[1, 5, :2, :3], v2[5])
    assert torch.equal(out.features[1, 5, :F, 3:], a2[5 * F:])


def test_all_missing_video_uses_given_dims():
    a = make_audio(F + 1, 2)
    out = synchronise([None, torch.zeros(0, 30, 3)], [a, a], video_dim=3, num_visual_tokens=30)
    assert out.features.shape == (2, 2, 30, 5)
    assert out.has_video.tolist() == [False, False]
    assert not out.features[..., :3].any()
    assert torch.equal(out.token_mask[0], expected_mask(2, 30, 0, 30, F + 1))
    out = synchronise([make_video(1, 2, 3)], [None], audio_dim=4)
    assert out.features.shape == (1, 1, F, 7) and out.has_audio.tolist() == [False]


@pytest.mark.parametrize("kwargs,match", [
    (dict(video=[None], audio=[make_audio(3, 2)], num_visual_tokens=2), "video_dim"),
    (dict(video=[None], audio=[make_audio(3, 2)], video_dim=3), "num_visual_tokens"),
    (dict(video=[make_video(2, 2, 3)], audio=[None]), "audio_dim"),
    (dict(video=[None], audio=[torch.zeros(0, 2)], video_dim=3, num_visual_tokens=2),
     "neither video nor audio"),
    (dict(video=[make_video(2, 2, 3)], audio=[make_audio(3, 2)], video_dim=4), "video_dim=4"),
    (dict(video=[make_video(2, 2, 3), make_video(2, 2, 4)], audio=[None, None], audio_dim=2),
     "inconsistent video_dim"),
    (dict(video=[make_video(2, 2, 3)], audio=[make_audio(3, 2)], fps=3.0), "fps"),
    (dict(video=[None], audio=[make_audio(3, 2), None]), "equal length"),
])
def test_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synchronise(**kwargs)


def test_float16_in_float16_out():
    v, a = make_video(2, 2, 3).half(), make_audio(2 * F, 2).half()
    out = synchronise([v], [a])
    assert out.features.dtype == torch.float16
    assert torch.equal(out.features[0, 1, :F, 3:], a[F:])
    out = synchronise([None], [a], video_dim=3, num_visual_tokens=2)
    assert out.features.dtype == torch.float16
