"""Curation: raw audio-video corpora -> filtered WebDataset shards (pure logic, scorers, the Ray Data graph)."""
