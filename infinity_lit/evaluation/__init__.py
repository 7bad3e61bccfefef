"""The evaluation suite: checkpoint → sample folder → metrics.json → report (the numbers themselves come
from ``infinity_lit.metrics``).

Modules (imported by their full path):

    images       image folders / shard splits as uint8 batches (ImageSet, open_image_set)
    sampling     sample_to_folder (resumable PNGs + metadata.jsonl), read_prompts, sample_checkpoint
    scoring      score_generated / score_folder → metrics.json records, write_metrics_json
    recon        evaluate_reconstruction, reconstruction_record (PSNR, SSIM, per-scale PSNR, rFID; per
                 aspect-ratio bucket on bucketed shards)
    tensorboard  event_dirs, read_scalars, per_scale_values (reading runs back)
    report       make_report → self-contained HTML + Markdown comparison of runs
"""
