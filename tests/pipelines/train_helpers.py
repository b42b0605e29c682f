"""In-memory feature rows and configs for training tests (no Ray, no shards)."""

import dataclasses
import os

import numpy as np

from av_model.configlib import from_dict, to_dict
from av_model.tiny import tiny_model_config
from pipelines.train_config import TrainConfig

COLOURS = ["red", "green", "blue", "white"]


def colour_rows(n: int = 16, seed: int = 0) -> list[dict]:
    """Clips whose video carries a colour in a block of feature dims, and QA about it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % len(COLOURS)
        v = rng.standard_normal((4, 17, 32)).astype(np.float16) * 0.1
        v[:, :, c * 8:(c + 1) * 8] += 2.0
        a = rng.standard_normal((100, 32)).astype(np.float16) * 0.1
        rows.append(dict(clip_id=f"c{i}", split="train", video=v, audio=a,
                         caption=f"a {COLOURS[c]} screen",
                         conversations=[{"role": "user", "content": "<AUD_VIS>\nWhat colour?"},
                                        {"role": "assistant", "content": COLOURS[c]}]))
    return rows


def train_config(paths: dict, mode: str = "full", **sections) -> TrainConfig:
    model = tiny_model_config(paths)
    model = dataclasses.replace(model, llm=dataclasses.replace(model.llm, mode=mode))
    data = {"stage": "align" if mode == "frozen" else "instruct", "model": to_dict(model),
            "data": {"features": "unused", "batch_size": 4},
            "optim": {"max_steps": 10, "lr": 2e-3},
            "deepspeed": {"enabled": False},
            "run": {"checkpoint_every": 1000, "val_every": 0, "generate_samples": 0}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return from_dict(TrainConfig, data)


def single_process_dist_env(port: int) -> None:
    """What DeepSpeed reads to start a one-process gloo group."""
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
