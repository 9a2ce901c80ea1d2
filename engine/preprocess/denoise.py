"""Step 1: adaptive non-local means denoising (Manjón et al. 2010) through ANTs."""

from __future__ import annotations

from engine.preprocess.ants_io import require_ants


def denoise(image, mask, *, fast: bool = False):
    """Denoise ``image`` within ``mask`` with ANTs' Rician-noise adaptive non-local means.

    Restricting the filter to the (slightly dilated) brain keeps it about five times faster
    than the whole field of view; only the brain is kept afterwards anyway.

    Args:
        image: ANTs image (scanner intensities).
        mask: ANTs image, 1 inside the region to denoise.
        fast: search radius 1 instead of ANTs' default 2 (about 2.5x faster; tests, previews).

    Returns:
        The denoised ANTs image (float).
    """
    ants = require_ants()
    return ants.denoise_image(image, mask=mask, noise_model="Rician", p=1, r=1 if fast else 2)
