"""Evaluation: reconstruction metrics (PSNR/SSIM), FID/KID, CLIP score, sampling to folders and reports."""
