"""The engine's numpy sliding window (ONNX path) blends windows exactly as MONAI's sliding_window_inference
(Gaussian, overlap 0.5), which training validation uses (onfh_seg.model.module)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
inferers = pytest.importorskip("monai.inferers")

from onfh_seg.infer.windows import class_argmax, gaussian_importance, sliding_window, starts  # noqa: E402


def _network() -> "torch.nn.Module":
    """Small 3-class conv net with instance normalisation, so its output depends on the window it sees."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.InstanceNorm3d(4),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(4, 3, 3, padding=1),
        torch.nn.Softmax(dim=1),
    )
    return net.eval()


@pytest.mark.parametrize("shape, roi", [((40, 36, 44), (16, 16, 16)), ((33, 27, 24), (12, 16, 20))])
def test_numpy_sliding_window_matches_monai(shape, roi) -> None:
    net = _network()
    rng = np.random.default_rng(3)
    x = rng.random(shape, dtype=np.float32)
    x[10:20, 8:18, 6:16] += 2.0  # structure, so windows see different statistics

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    ours = sliding_window(run, x, roi, overlap=0.5, divisor=4)
    with torch.no_grad():
        ref = inferers.sliding_window_inference(torch.from_numpy(x)[None, None], roi, sw_batch_size=2,
                                                predictor=net, overlap=0.5, mode="gaussian")[0].numpy()
    assert ours.shape == ref.shape == (3, *shape)
    assert float(np.abs(ours - ref).max()) < 1e-4
    # the windows really overlap and disagree, so the blend weights are exercised
    one_pass = run(x[None, None])[0]
    assert float(np.abs(ours - one_pass).max()) > 1e-2


def test_gaussian_importance_equals_monai_map() -> None:
    from monai.data.utils import compute_importance_map

    for size in [(16, 16, 16), (12, 17, 20), (96, 96, 96)]:
        ref = compute_importance_map(size, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(gaussian_importance(size), ref, rtol=1e-5, atol=1e-7)


def test_window_starts_cover_the_volume_once_per_step() -> None:
    assert starts(10, 16, 8) == [0]
    assert starts(40, 16, 8) == [0, 8, 16, 24]
    assert starts(41, 16, 8) == [0, 8, 16, 24, 25]
    for n in range(16, 80):
        s = starts(n, 16, 8)
        assert s[0] == 0 and s[-1] == n - 16 and all(b - a <= 8 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("seed", range(6))
def test_probs_on_grid_gives_the_labels_of_resampling_every_class_everywhere(seed: int, monkeypatch) -> None:
    """The engine resamples the non-background classes only near the crop's foreground: background
    probability and labels (argmax and the lesion threshold) equal those of the full resampling; a box
    drawn too tight (a much lower background limit) would change labels, and this data shows it."""
    from onfh_seg.geometry import crop_grid, resample_probs
    from onfh_seg.infer import windows
    from onfh_seg.infer.windows import lesion_decision, probs_on_grid

    rng = np.random.default_rng(seed)
    n = 32
    logits = rng.normal(0, 0.1, (5, n, n, n)).astype(np.float32)
    zz = np.linalg.norm(np.indices((n, n, n)) - rng.uniform(12, 20, 3)[:, None, None, None], axis=0)
    logits[0] += (0.3 * (zz - 3 - seed)).astype(np.float32)  # a foreground ball, fading into background
    logits[1] += 2.0  # mostly one class: labels change where p0 crosses about 0.5
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    f_aff, _ = crop_grid(np.array([1.0, -2.0, 3.0]), n, 1.0)
    a = np.radians(10.0 + 7.0 * seed)  # an oblique input grid through the crop
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    shape = (40, 40, 14)
    dst = np.eye(4)
    dst[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    dst[:3, 3] = np.array([1.0, -2.0, 3.0]) - dst[:3, :3] @ (np.array(shape) - 1) / 2
    full = resample_probs(probs, f_aff, dst, shape)
    fast = probs_on_grid(probs, f_aff, dst, shape, threads=1 + seed % 2)
    assert np.array_equal(fast[0], full[0])
    assert (full.argmax(0) > 0).any()
    for threshold in (None, 0.4):
        assert np.array_equal(lesion_decision(fast, threshold), lesion_decision(full, threshold))
    monkeypatch.setattr(windows, "FOREGROUND_P0", 0.05)
    tight = probs_on_grid(probs, f_aff, dst, shape)
    assert not np.array_equal(lesion_decision(tight, None), lesion_decision(full, None))


def test_class_argmax_is_numpys_argmax_ties_included() -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        probs = rng.random((5, 23, 19, 7)).astype(dtype)
        probs[:, ::3] = np.round(probs[:, ::3], 1)  # ties: the first class of the largest value wins
        probs[:, 0, 0, 0] = 0.2
        probs[2:, 1, 1, 1] = -0.0
        probs[:2, 1, 1, 1] = 0.0
        got = class_argmax(probs)
        assert got.dtype == np.uint8
        assert np.array_equal(got, probs.argmax(0))


def test_one_window_is_the_blend_and_leaves_the_networks_output_alone() -> None:
    """A crop that is one window: the blend's quotient (p * w) / w bit for bit, and the array ``run`` returned
    is not written to (the engine keeps it to reuse as the unmirrored pass)."""
    from onfh_seg.infer.windows import gaussian_importance

    rng = np.random.default_rng(5)
    x = rng.random((16, 16, 16), dtype=np.float32)
    kept: list[np.ndarray] = []

    def run(a: np.ndarray) -> np.ndarray:
        kept.append(np.concatenate([a, 1.0 - a], axis=1))
        return kept[-1]

    out = sliding_window(run, x, (16, 16, 16), overlap=0.5, divisor=16)
    p, w = kept[0][0], gaussian_importance((16, 16, 16))
    assert np.array_equal(out, (p * w) / w[None])
    assert np.array_equal(kept[0][0, 0], x) and np.array_equal(kept[0][0, 1], 1.0 - x)
