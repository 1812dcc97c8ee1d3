"""The method study: a small pretrained VACE world where hands are measurable (world, score, models, pretraining, experiment)."""
