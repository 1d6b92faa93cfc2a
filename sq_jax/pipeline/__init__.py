"""Pipeline stages: datasets in, datasets out, each idempotent and resumable."""
