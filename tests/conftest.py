"""Shared fixtures: tiny random-init components (diffusers-style dummies), real media, env for offline runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from local_cluster import free_ports

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "manifests"
MEDIA_DIR = Path(os.environ.get("AVSYNC_TEST_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The shared real-media folder (../shared/media); tests that need it skip where it is absent."""
    if not MEDIA_DIR.is_dir():
        pytest.skip(f"real test media not found at {MEDIA_DIR} (set AVSYNC_TEST_MEDIA to its path)")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"official state-dict manifests not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_components():
    from avsync_ray.models.presets import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components):
    from avsync_ray.pipelines import AVSyncDPipeline

    pipe = AVSyncDPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from avsync_ray.pipelines.presets import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_imagebind_checkpoint(tmp_path_factory):
    """A file in imagebind_huge.pth's format (modality_{preprocessors,trunks,heads,postprocessors}.<m>.*), made by
    the `imagebind` package's own ImageBindModel at the tiny sizes; returns (path, that model)."""
    from avsync_ray.models.imagebind import tiny_official_imagebind

    official = tiny_official_imagebind(seed=0)
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth"
    torch.save(official.state_dict(), path)
    return path, official


OFFICIAL_UNET_EXTRA_CONFIG = {
    # What the official AudioUNet3DConditionModel writes besides the SD1.5 fields (its __init__ signature).
    "only_cross_attention": False, "encoder_hid_dim": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None,
    "upcast_attention": False, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "projection_class_embeddings_input_dim": None, "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}  # fmt: skip


@pytest.fixture(scope="session")
def write_official_unet():
    """Write a UNet as the official code saves it: ``config.json`` with ``_class_name``
    AudioUNet3DConditionModel, the official block names (with their optional "UNetRes" alias) and options."""
    import json

    from safetensors.torch import save_file

    def write(unet, path, weights: str = "safetensors"):
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        config.update(OFFICIAL_UNET_EXTRA_CONFIG)
        config.update(_class_name="AudioUNet3DConditionModel", _diffusers_version="0.29.2")
        config["down_block_types"] = ["UNetRes" + name for name in config["down_block_types"]]
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config))
        state = {k: v.contiguous() for k, v in unet.state_dict().items()}
        if weights == "safetensors":
            save_file(state, path / "diffusion_pytorch_model.safetensors")
        else:
            torch.save(state, path / "diffusion_pytorch_model.bin")
        return path

    return write


# S3 tests talk to a local moto server through a loopback proxy that counts requests and can throttle
# (tests/s3_proxy.py); the variables are set before Ray starts so its workers inherit them.
MOTO_PORT, PROXY_PORT = free_ports(2)  # probed together: two probes one after the other may get the same port
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{PROXY_PORT}",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=1024 * 2**20,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def _s3_endpoint():
    """moto on loopback behind the counting proxy, with a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer
    from s3_proxy import S3Proxy

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT)
    server.start()
    proxy = S3Proxy(f"http://127.0.0.1:{MOTO_PORT}", port=PROXY_PORT).start()
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="avsync-test")
    yield proxy
    proxy.stop()
    server.stop()


@pytest.fixture(scope="session")
def s3_server(_s3_endpoint):
    """An S3 API on loopback (moto), with a bucket; yields the bucket URI."""
    return "s3://avsync-test"


@pytest.fixture()
def s3_proxy(_s3_endpoint):
    """The proxy every S3 request of the tests goes through (all processes): counts from zero, no latency or
    faults unless the test sets them (``latency_s``, ``slowdown_share``, ``reset_share``, ``refused_keys``)."""
    _s3_endpoint.reset()
    yield _s3_endpoint
    _s3_endpoint.reset()


@pytest.fixture(scope="session")
def tiny_clip_vision_dir(tmp_path_factory):
    """A random-init CLIP vision tower with projection, saved as a transformers folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32, projection_dim=16)
    )
    path = tmp_path_factory.mktemp("clip_vision")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    from avsync_ray.models.sync_classifier import SyncClassifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sync_classifier")
    SyncClassifier(image_size=64).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gloo_world_of_one(tmp_path_factory):
    """A one-process gloo group and the launcher's variables, as Ray Train gives each worker (DeepSpeed needs both).
    One per session: DeepSpeed caches the groups it derives from the first one, so a second group would be unknown
    to it."""
    import os

    import torch.distributed as dist

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("gloo") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """8 training clips (one corrupt) in 2 shards and 4 test clips, as curation writes them."""
    from avsync_ray.synth import synthesize_shards

    root = tmp_path_factory.mktemp("shards")
    corrupt = "sync-s0-00005_0000000_0006000"
    synthesize_shards(root, "train", 8, seed=0, corrupt_keys=(corrupt,))
    synthesize_shards(root, "test", 4, seed=1)
    return {"root": root, "corrupt_key": corrupt}


@pytest.fixture(scope="session")
def lineage_registry(tmp_path_factory, synthetic_shards, tiny_model_dir):
    """An MLflow store with lineage (tests/lineage_support.py): the synthetic shards curated, a training run on them,
    and its exports at steps 2 and 4 registered as versions 1 (@champion) and 2 (@candidate) of ``REGISTERED``. Tests
    that add to it add runs or aliases of their own."""
    from lineage_support import REGISTERED, lineage_store

    return lineage_store(tmp_path_factory.mktemp("lineage"), synthetic_shards["root"], {2: tiny_model_dir, 4: tiny_model_dir}, REGISTERED, {"champion": 1})
