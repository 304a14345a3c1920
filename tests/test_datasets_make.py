"""`dmm datasets make` (dmm.data.generate): SAC-made MuJoCo datasets in Minari and D4RL layouts,
and the Hopper datasets the repository ships (datasets/hopper: HDF5 files and MANIFEST.json; their
Minari datasets made from them by dmm.data.to_minari, as `dmm datasets install` does)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("mujoco", reason="needs gymnasium[mujoco]")

from dmm.data.d4rl import load_hdf5  # noqa: E402
from dmm.data.install import install_shipped, sha256  # noqa: E402
from dmm.data.scores import REFERENCE_RETURNS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "datasets" / "hopper"


def load_minari_from(store: Path, dataset_id: str):
    from dmm.data.minari import load_minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(store)
    try:
        return load_minari(dataset_id)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def episode_returns(ds):
    return np.array([ep["rewards"].sum(dtype=np.float64) for ep in ds.episodes])


def assert_same_data(a, b):
    assert len(a.episodes) == len(b.episodes)
    for ea, eb in zip(a.episodes, b.episodes):
        for key in ("observations", "actions", "rewards", "terminals"):
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)


# ---- a tiny run of the whole command ------------------------------------------------------------

def test_make_tiny_hopper_resumes_and_loads_through_both_loaders(tmp_path, one_thread):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("jax", reason="minari's DataCollector needs minari[create] (jax)")
    from dmm.data import generate as g

    work, out = tmp_path / "work", tmp_path / "out"
    tiny = dict(eval_every=150, ckpt_every=100, eval_episodes=1)
    # First call: no cut within 250 steps (unreachable threshold): it stops with a checkpoint.
    with pytest.raises(RuntimeError, match="no medium cut"):
        g.train_sac("Hopper-v5", work, seed=3, max_medium_steps=250, threshold=1e9,
                    progress=False, **tiny)
    first = json.loads((work / "state.json").read_text())
    assert first["timesteps"] >= 250 and first["medium"] is None
    # Second call resumes from that checkpoint; any evaluation now passes the cut.
    res = g.make_datasets("Hopper-v5", seed=3, steps=300, work=work, d4rl_dir=out / "d4rl",
                          minari_dir=out / "minari", progress=False,
                          train_kwargs=dict(max_medium_steps=600, threshold=-1e9, **tiny))
    state = json.loads((work / "state.json").read_text())
    cut = state["medium"]["step"]
    assert first["timesteps"] < cut <= first["timesteps"] + 150 + 1000
    assert set(res) == {"random", "medium", "medium-replay"}
    lo, hi = REFERENCE_RETURNS["hopper"]
    for kind, meta in res.items():
        h5 = load_hdf5(out / "d4rl" / g.hdf5_name("Hopper-v5", kind))
        mi = load_minari_from(out / "minari", g.minari_id("Hopper-v5", kind))
        assert h5.env_id == mi.env_id == "Hopper-v5"
        assert h5.reference_returns == mi.reference_returns == (lo, hi)
        assert_same_data(h5, mi)
        b = meta["behaviour"]
        assert len(h5.episodes) == b["episodes"]
        assert sum(len(ep["rewards"]) for ep in h5.episodes) == b["steps"]
        np.testing.assert_allclose(episode_returns(h5).mean(), b["return_mean"], rtol=1e-5)
        if kind != "medium-replay":
            assert b["steps"] >= 300  # whole episodes up to at least --steps
    import minari
    os.environ["MINARI_DATASETS_PATH"] = str(out / "minari")
    try:  # the Minari files say where they came from, so minari can rebuild the env
        data = minari.load_dataset(g.minari_id("Hopper-v5", "medium"))
        assert data.env_spec.id == "Hopper-v5"
        data.recover_environment().close()
        assert json.loads(data.storage.metadata["dmm_metadata"])["kind"] == "medium"
    finally:
        os.environ.pop("MINARI_DATASETS_PATH")
    # medium-replay is the replay buffer up to the cut, before and after the resume.
    assert res["medium-replay"]["behaviour"]["steps"] == cut
    assert res["medium-replay"]["behaviour"]["episodes"] == state["medium"]["episodes"]
    # A third call writes nothing new.
    again = g.make_datasets("Hopper-v5", seed=3, steps=300, work=work, d4rl_dir=out / "d4rl",
                            minari_dir=out / "minari", progress=False,
                            train_kwargs=dict(max_medium_steps=600, threshold=-1e9, **tiny))
    assert again == res
    # --until expert continues the same SAC run, then writes expert and medium-expert.
    res2 = g.make_datasets("Hopper-v5", seed=3, until="expert", steps=300, work=work,
                           d4rl_dir=out / "d4rl", minari_dir=out / "minari", progress=False,
                           train_kwargs=dict(expert_steps=cut + 200, **tiny))
    assert set(res2) == set(g.KINDS) and res2["medium"] == res["medium"]
    assert json.loads((work / "state.json").read_text())["expert"]["step"] >= cut + 200
    me = res2["medium-expert"]["behaviour"]
    assert me["episodes"] == res["medium"]["behaviour"]["episodes"] + res2["expert"]["behaviour"]["episodes"]
    for kind in ("expert", "medium-expert"):
        h5 = load_hdf5(out / "d4rl" / g.hdf5_name("Hopper-v5", kind))
        assert_same_data(h5, load_minari_from(out / "minari", g.minari_id("Hopper-v5", kind)))
        assert len(h5.episodes) == res2[kind]["behaviour"]["episodes"]
    # Packing and installing give the same data back.
    manifest = g.pack("Hopper-v5", out, list(res))
    assert {m["episodes"] for m in manifest.values()} == {m["behaviour"]["episodes"] for m in res.values()}
    install_shipped(out, d4rl_dir=tmp_path / "d4rl2", minari_dir=tmp_path / "minari2")
    ds = load_minari_from(tmp_path / "minari2", g.minari_id("Hopper-v5", "medium"))
    assert_same_data(ds, load_hdf5(tmp_path / "d4rl2" / g.hdf5_name("Hopper-v5", "medium")))


def test_cli_datasets_without_subcommand_still_lists(capsys, monkeypatch, tmp_path):
    from dmm.cli import main

    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert main(["datasets"]) == 0
    assert "embedded datasets" in capsys.readouterr().out


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1", "Hopper-v4"])
def test_make_rejects_unsupported_envs(env):
    from dmm.data import generate as g

    with pytest.raises(ValueError, match="choose one of Hopper-v5, HalfCheetah-v5, Walker2d-v5"):
        g.task_of(env)


# ---- the shipped Hopper datasets ---------------------------------------------------------------

def shipped():
    path = SHIPPED / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("name", sorted(shipped()) or ["(none shipped)"])
def test_shipped_hopper_dataset_loads_through_both_loaders(name, tmp_path):
    manifest = shipped()
    if name not in manifest:
        pytest.skip("datasets/hopper/MANIFEST.json lists no dataset")
    m = manifest[name]
    h5_path = SHIPPED / m["hdf5"]
    assert sha256(h5_path) == m["hdf5_sha256"]
    h5 = load_hdf5(h5_path)
    pytest.importorskip("minari")
    from dmm.data.to_minari import make_minari

    make_minari(h5_path, m["minari_id"], tmp_path)  # replays every episode: ~15-35 s each
    mi = load_minari_from(tmp_path, m["minari_id"])
    for ds in (h5, mi):
        assert ds.env_id == "Hopper-v5"
        assert ds.reference_returns == REFERENCE_RETURNS["hopper"]
        assert len(ds.episodes) == m["episodes"]
        assert sum(len(ep["rewards"]) for ep in ds.episodes) == m["steps"]
        rets = episode_returns(ds)
        np.testing.assert_allclose(rets.mean(), m["return_mean"], rtol=1e-5)
        np.testing.assert_allclose(rets.std(), m["return_std"], rtol=1e-4)
    assert_same_data(h5, mi)
    assert h5.target_return == mi.target_return == 3600.0  # the DT target for hopper
    with h5py.File(h5_path, "r") as f:
        meta = json.loads(f.attrs["dmm_metadata"])
    assert meta["behaviour"]["episodes"] == m["episodes"]
