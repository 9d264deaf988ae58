"""Masked-autoencoder pre-training of the shared BiLSTM encoder.

- `masking`: which timesteps are hidden (random / block / patch) and how (a learned token).
- `pretrainer`: `JadePretrainer` and `masked_huber_loss`.
- `config`: `PretrainConfig`, read from configs/pretrain.yaml.
- `data`: unlabeled windows with a date-based train/val split.
- `trainer`: `pretrain(config, out_dir, resume=...)` — checkpoints, resume, DDP under torchrun.
- `transfer`: `load_pretrained_encoder(model, run_dir, freeze=...)` into JadeModel.

Run it with `invoke pretrain`, `python -m moola_core.pretrain` or
`torchrun --nproc_per_node N -m moola_core.pretrain` (see docs/pretraining.md).
"""
