from avsync_ray.cli import app

app(prog_name="avsync")
