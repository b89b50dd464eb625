"""bench/seeds.py's histogram equalisation (``--equalize``), on real X-rays of the shared data."""

from __future__ import annotations

import numpy as np

from bench.seeds import equalize
from tests.bundles import real_images


def test_equalize_flattens_each_histogram_and_keeps_the_grey_order():
    images = real_images("test", 3, 64)
    # a dim, low-contrast copy: the grey levels squeezed into 60-120
    dim = (60 + images.astype(np.float64) * 60 / 255).round().astype(np.uint8)
    out = equalize(np.concatenate([images, dim]))
    assert out.shape == (12, 64, 64) and out.dtype == np.uint8
    for source, result in zip(np.concatenate([images, dim]), out, strict=True):
        assert result.min() == 0 and result.max() == 255  # the whole range, whatever came in
        order = np.argsort(source.ravel(), kind="stable")
        assert np.all(np.diff(result.ravel()[order].astype(int)) >= 0)  # monotonic mapping
        # near-flat: each quarter of the range holds about a quarter of the pixels
        quarters = np.histogram(result, bins=4, range=(0, 256))[0] / result.size
        assert np.all(np.abs(quarters - 0.25) < 0.1), quarters
    # exposure no longer matters much: the dim copy equalises close to the original
    assert np.abs(out[:6].astype(int) - out[6:].astype(int)).mean() < 8
    flat = equalize(np.full((1, 8, 8), 77, np.uint8))
    assert flat.dtype == np.uint8 and len(np.unique(flat)) == 1  # no division by zero
