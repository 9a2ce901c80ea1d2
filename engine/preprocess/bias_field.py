"""Step 2: N4 bias-field (inhomogeneity) correction (Tustison et al. 2010) through ANTs."""

from __future__ import annotations

from engine.preprocess.ants_io import require_ants


def correct_bias_field(image, mask, *, fast: bool = False):
    """N4 within the brain mask, fitted on a 4x shrunk copy (ANTs' usual setting).

    Args:
        image: ANTs image with positive intensities in the mask.
        mask: ANTs image, 1 inside the region the field is fitted on.
        fast: fewer iterations (for tests and previews).

    Returns:
        The corrected ANTs image.
    """
    ants = require_ants()
    iterations = [20, 20] if fast else [50, 50, 30]
    return ants.n4_bias_field_correction(
        image, mask=mask, shrink_factor=4, convergence={"iters": iterations, "tol": 1e-7}
    )
