"""Audio data: synthetic music for demos and tests (manifests, datasets and shards come with pretraining)."""
