"""Metrics on the ground floor: numbers only (no model, no checkpoint), imported by their full path so that
e.g. ``reconstruction`` does not pay for torch-fidelity.

    reconstruction  psnr, ssim, psnr_per_image, to_uint8, to_float (images in [-1, 1], data range 2)
    inception       the offline TF Inception in torch-fidelity's layout: inception_weights_path,
                    load_inception, inception_features
    fid             fid_from_features, kid_from_features, fid_kid, check_set_sizes (torch-fidelity)
    clip_score      load_clip, ClipScorer, clip_scores, CLIP_NOT_COMPUTED (the ``clip`` package)
"""
