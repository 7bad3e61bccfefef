"""Evaluation: reconstruction metrics (PSNR/SSIM), FID/KID, CLIP score, sampling to folders and reports.

Modules (imported by their full path, so that e.g. ``reconstruction`` does not pay for torch-fidelity):

    reconstruction  psnr, ssim, psnr_per_image, to_uint8, evaluate_reconstruction (per-scale PSNR, rFID)
    inception       the offline TF Inception in torch-fidelity's layout: inception_weights_path,
                    load_inception, inception_features
    fid             fid_from_features, kid_from_features, fid_kid, check_set_sizes (torch-fidelity)
    clip_score      load_clip, ClipScorer, clip_scores, CLIP_NOT_COMPUTED (the ``clip`` package)
    images          image folders / shard splits as uint8 batches (ImageSet, open_image_set)
    sampling        sample_to_folder (resumable PNGs + metadata.jsonl), read_prompts
    scoring         score_generated → metrics.json records, write_metrics_json
    tensorboard     log_hparams_with_metrics, read_scalars, per_scale_values
    report          make_report → self-contained HTML + Markdown comparison of runs
    cli             ``infinity-lit eval sample|score|recon|report``
"""
