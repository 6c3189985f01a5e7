"""The paper's metrics: pure formulas (sync, Fréchet, per-clip video scores), the official evaluation protocol,
and the sync metrics of one (audio, video) pair. Curation's filter, training's loss, evaluation and serving use
them; nothing here runs Ray."""
