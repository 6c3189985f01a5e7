"""Training with Ray Train + DeepSpeed: WebDataset input (``data``), pure objectives (``objectives``), the engine
and its checkpoints (``engine``), the per-worker loop (``loops``), the ``TorchTrainer`` launcher (``launcher``)
and checkpoint export (``export``). Only ``loops`` and ``launcher`` import Ray."""
