"""Two-process data parallel training on CPU (gloo): finishes, ranks see different batches,
and end with identical weights."""
import os
import socket

import torch
import torch.multiprocessing as mp

from test_train import tiny_config, write_d4rl_hdf5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from dmm.train import train

    losses = []
    res = train(cfg, progress=False, log=lambda s: None,
                callback=lambda step, info: losses.append(float(info["loss"])))
    torch.save({"state": res.model.state_dict(), "losses": losses}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gloo_ddp(tmp_path):
    data = write_d4rl_hdf5(tmp_path / "toy.hdf5")
    cfg = tiny_config(data, tmp_path / "run", steps=4)
    cfg["train"]["device"] = "cpu"
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks disagree on {k}"
    assert len(r0["losses"]) == 4
    assert r0["losses"] != r1["losses"]  # each rank drew its own batches
    # only rank 0 wrote the run folder, and its checkpoint holds the shared weights
    from dmm.checkpoint import load_checkpoint
    ckpt = load_checkpoint(tmp_path / "run")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, r0["state"][k])
