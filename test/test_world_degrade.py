"""Blur + noise degradation (handshake paper §IV-B): the drawn statistics match the configuration."""
import numpy as np
import pytest

from collab_perception.world.degrade import (DegradeConfig, Degradation, apply_degradation, degrade, kernel_sigma,
                                             sample_degradation, scaled_kernel)


def test_kernel_sizes_scale_with_width_and_cover_the_configured_range():
    cfg = DegradeConfig(reference_width=512)       # 1..100 at 512 px
    assert cfg.kernel_range(512) == (1, 101)       # 100 -> the nearest odd size
    assert cfg.kernel_range(128) == (1, 25)
    assert DegradeConfig().kernel_range(128) == (1, 51)   # the default: 1..100 at 256 px
    rng = np.random.default_rng(0)
    ks = np.array([sample_degradation(rng, 128, cfg).kernel_size for _ in range(3000)])
    assert np.all(ks % 2 == 1) and ks.min() == 1 and ks.max() == 25
    # uniform at the reference size -> about uniform over the scaled odd sizes
    assert abs(ks.mean() - 13) < 0.6
    counts = np.bincount(ks)[1::2]
    assert counts.min() > 0.4 * counts.mean()


def test_noise_std_matches_the_draw_and_the_range():
    cfg = DegradeConfig(kernel_min=1, kernel_max=1, noise_std_min=4.0, noise_std_max=16.0)
    rng = np.random.default_rng(1)
    flat = np.full((128, 128, 3), 128, np.uint8)
    drawn, measured = [], []
    for _ in range(40):
        out, d = degrade(flat, rng, cfg)
        assert d.kernel_size == 1
        drawn.append(d.noise_std)
        measured.append(out.astype(float).std())
    drawn, measured = np.array(drawn), np.array(measured)
    assert np.all((drawn >= 4.0) & (drawn <= 16.0))
    assert np.allclose(measured, drawn, rtol=0.05, atol=0.3)   # rounding to uint8 adds ~0.29 in quadrature


@pytest.mark.parametrize('k', [3, 9, 25])
def test_blur_removes_detail_in_proportion_to_the_kernel(k):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    d = Degradation(kernel_size=k, sigma=kernel_sigma(k), noise_std=0.0)
    out = apply_degradation(img, d, rng).astype(float)
    detail = np.abs(np.diff(out, axis=1)).mean()
    # white noise blurred by a Gaussian of sigma s keeps about 1 / (2 sqrt(pi) s) of its gradient energy
    assert detail < np.abs(np.diff(img.astype(float), axis=1)).mean() * 1.0 / (kernel_sigma(k) * 2.0)


def test_scaled_kernel_rounds_to_odd():
    assert [scaled_kernel(k, 128, 512) for k in (1, 4, 8, 12, 100)] == [1, 1, 3, 3, 25]
