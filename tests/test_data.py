"""dmm.data: loaders (D4RL HDF5, native .npz, embedded Pendulum, Minari), sampler, scores."""
import os
import time

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from dmm.data import (PAD_ACTION, SegmentSampler, TrajectoryDataset, load_dataset,  # noqa: E402
                      normalized_score, save_native, load_native)
from dmm.data import embedded  # noqa: E402


# ---- D4RL HDF5 ----------------------------------------------------------------------------

def flat_arrays(n=23, s_dim=3, a_dim=2):
    obs = np.arange(n * s_dim, dtype=np.float32).reshape(n, s_dim)
    act = (np.arange(n * a_dim, dtype=np.float32).reshape(n, a_dim) % 7) / 7.0
    rew = np.arange(n, dtype=np.float32) * 0.5
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[[4, 15]] = True  # episodes [0, 5), [10, 16) end in a terminal state
    tout[9] = True        # [5, 10) ends at the time limit; [16, 23) is an unfinished tail
    return {"observations": obs, "actions": act, "rewards": rew, "terminals": term, "timeouts": tout}


def write_hdf5(path, arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return str(path)


def test_d4rl_hdf5_episodes_split_at_terminals_or_timeouts(tmp_path):
    a = flat_arrays()
    path = write_hdf5(tmp_path / "hopper-medium-v2.hdf5", a)
    ds = load_dataset(path)
    bounds = [(0, 5), (5, 10), (10, 16)]  # the 7-step tail is shorter than min_tail_len=10
    assert [len(ep["rewards"]) for ep in ds.episodes] == [hi - lo for lo, hi in bounds]
    for ep, (lo, hi) in zip(ds.episodes, bounds):
        np.testing.assert_array_equal(ep["observations"], a["observations"][lo:hi])
        np.testing.assert_array_equal(ep["actions"], a["actions"][lo:hi])
        np.testing.assert_array_equal(ep["rewards"], a["rewards"][lo:hi])
        np.testing.assert_array_equal(ep["terminals"], a["terminals"][lo:hi])
    np.testing.assert_allclose(ds.episode_returns(), [a["rewards"][lo:hi].sum() for lo, hi in bounds])
    assert (ds.state_dim, ds.act_dim) == (3, 2)
    assert ds.env_id == "Hopper-v5" and ds.reference_returns == (-20.272305, 3234.3)
    assert ds.reward_scale == 1000.0 and ds.target_return == 3600.0 and ds.max_ep_len == 1000

    from dmm.data.d4rl import load_hdf5
    with_tail = load_hdf5(path, min_tail_len=7)
    assert [len(ep["rewards"]) for ep in with_tail.episodes] == [5, 5, 6, 7]
    np.testing.assert_array_equal(with_tail.episodes[-1]["observations"], a["observations"][16:])


def test_d4rl_rewards_as_column_and_cache_lookup(tmp_path, monkeypatch):
    a = flat_arrays()
    a["rewards"] = a["rewards"][:, None]  # some D4RL files store (N, 1)
    write_hdf5(tmp_path / "walker2d_medium-v2.hdf5", a)  # D4RL's own download file name
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    ds = load_dataset("d4rl:walker2d-medium-v2")
    assert ds.env_id == "Walker2d-v5" and len(ds) == 3
    assert ds.episodes[0]["rewards"].shape == (5,)
    with pytest.raises(FileNotFoundError, match=r"antmaze-umaze-v2\.hdf5.*D4RL_DATASET_DIR"):
        load_dataset("d4rl:antmaze-umaze-v2")
    write_hdf5(tmp_path / "antmaze-umaze-v2.hdf5", flat_arrays())
    am = load_dataset("d4rl:antmaze-umaze-v2")
    assert am.env_id is None and "note" in am.metadata and am.reward_scale == 1.0


def corrupt(kind, a):
    a = dict(a)
    if kind == "missing":
        del a["actions"]
    elif kind == "length":
        a["actions"] = a["actions"][:-1]
    elif kind == "nan":
        a["observations"] = a["observations"].copy()
        a["observations"][7, 1] = np.nan
    elif kind == "inf":
        a["rewards"] = a["rewards"].copy()
        a["rewards"][3] = np.inf
    elif kind == "ndim":
        a["observations"] = a["observations"].reshape(-1)
    elif kind == "reward_cols":
        a["rewards"] = np.stack([a["rewards"], a["rewards"]], 1)
    return a


@pytest.mark.parametrize("kind,key,pattern", [
    ("missing", "actions", "missing key 'actions'"),
    ("length", "actions", r"key 'actions' has 22 rows but 'observations' has 23; every key must"),
    ("nan", "observations", r"key 'observations' contains NaN or inf \(first at row 7"),
    ("inf", "rewards", r"key 'rewards' contains NaN or inf \(first at row 3"),
    ("ndim", "observations", r"key 'observations' has shape \(69,\) \(1-D\) but must be 2-D"),
    ("reward_cols", "rewards", r"key 'rewards' has shape \(23, 2\)"),
])
def test_d4rl_corrupt_files_name_file_and_key(tmp_path, kind, key, pattern):
    path = write_hdf5(tmp_path / "hopper-bad.hdf5", corrupt(kind, flat_arrays()))
    with pytest.raises(ValueError, match=pattern) as e:
        load_dataset(path)
    assert str(e.value).startswith("hopper-bad.hdf5: ") and f"'{key}'" in str(e.value)


def test_d4rl_truncated_and_missing_files(tmp_path):
    good = write_hdf5(tmp_path / "good.hdf5", flat_arrays(n=2000))
    data = open(good, "rb").read()
    truncated = tmp_path / "trunc.hdf5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^trunc\.hdf5: cannot read as HDF5 .*truncated or corrupt"):
        load_dataset(str(truncated))
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(ValueError, match=r"^garbage\.hdf5: cannot read as HDF5"):
        load_dataset(str(garbage))
    with pytest.raises(FileNotFoundError, match="nothere.hdf5: no such"):
        load_dataset(str(tmp_path / "nothere.hdf5"))
    with pytest.raises(ValueError, match="cannot tell what dataset"):
        load_dataset(str(tmp_path / "data.csv"))


# ---- native format ------------------------------------------------------------------------

def small_dataset():
    rng = np.random.default_rng(0)
    eps = []
    for T, term in [(4, True), (6, False), (3, True)]:
        eps.append({"observations": rng.normal(size=(T, 3)).astype(np.float32),
                    "actions": rng.uniform(-1, 1, (T, 2)).astype(np.float32),
                    "rewards": rng.normal(size=T).astype(np.float32),
                    "terminals": np.arange(T) == T - 1 if term else np.zeros(T, bool)})
    return TrajectoryDataset(eps, name="toy", env_id="Toy-v0", reference_returns=(-5.0, 5.0),
                             reward_scale=10.0, target_return=4.0, max_ep_len=50,
                             action_scale=2.0, metadata={"note": "hello"})


def test_native_round_trip(tmp_path):
    ds = small_dataset()
    path = save_native(ds, tmp_path / "sub" / "toy.npz")
    assert sorted(os.listdir(tmp_path / "sub")) == ["toy.npz"]  # no temp file left behind
    back = load_dataset(path)
    assert len(back) == len(ds)
    for e1, e2 in zip(ds.episodes, back.episodes):
        for k in ("observations", "actions", "rewards", "terminals"):
            np.testing.assert_array_equal(e1[k], e2[k])
            assert e1[k].dtype == e2[k].dtype
    for attr in ("name", "env_id", "reference_returns", "reward_scale", "target_return",
                 "max_ep_len", "action_scale", "metadata"):
        assert getattr(back, attr) == getattr(ds, attr), attr


def test_native_corrupt_files(tmp_path):
    flat = small_dataset().flat()
    del flat["timeouts"]
    np.savez(tmp_path / "nokey.npz", metadata=np.array("{}"), **flat)
    with pytest.raises(ValueError, match="nokey.npz: missing key 'timeouts'"):
        load_native(tmp_path / "nokey.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: not a readable .npz"):
        load_native(tmp_path / "junk.npz")


# ---- embedded Pendulum datasets -----------------------------------------------------------

def test_embedded_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DMM_CACHE_DIR", str(tmp_path))
    a = embedded.load_embedded("pendulum-medium", seed=3, n_episodes=10, cache=False)
    b = embedded.load_embedded("pendulum-medium", seed=3, n_episodes=10)  # generates, writes cache
    files = os.listdir(tmp_path / "datasets")
    assert files == [f"pendulum-medium-seed3-ep10-gen{embedded.GENERATOR_VERSION}.npz"]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached dataset should have been read")
    monkeypatch.setattr(embedded, "generate_episodes", no_generation)
    t0 = time.perf_counter()
    c = embedded.load_embedded("pendulum-medium", seed=3, n_episodes=10)
    assert time.perf_counter() - t0 < 1.0
    for x in (b, c):
        assert len(x) == len(a) == 10
        for e1, e2 in zip(a.episodes, x.episodes):
            for k in ("observations", "actions", "rewards", "terminals"):
                np.testing.assert_array_equal(e1[k], e2[k])
    assert c.env_id == "Pendulum-v1" and c.action_scale == 2.0 and c.max_ep_len == 200
    assert c.reward_scale == embedded.REWARD_SCALE and c.target_return == embedded.PENDULUM_EXPERT_RETURN
    monkeypatch.setattr(embedded, "REWARD_SCALE", 123.0)  # the code wins over the cached value
    assert embedded.load_embedded("pendulum-medium", seed=3, n_episodes=10).reward_scale == 123.0
    monkeypatch.undo()
    d = embedded.load_embedded("pendulum-medium", seed=4, n_episodes=10, cache=False)
    assert not np.array_equal(d.episodes[0]["observations"], a.episodes[0]["observations"])


def test_embedded_actions_replay_in_env():
    """Dataset actions * action_scale, replayed in a fresh env from the same reset seed,
    reproduce the stored observations and rewards: the data really is Pendulum-v1's."""
    import gymnasium as gym
    reset_seeds, rng = embedded._seeds(0, embedded.DATASETS["pendulum-medium"][0], 2)
    ds = embedded.load_embedded("pendulum-medium", n_episodes=2, cache=False)
    env = gym.make("Pendulum-v1")
    for ep, s in zip(ds.episodes, reset_seeds):
        obs, _ = env.reset(seed=int(s))
        assert len(ep["rewards"]) == 200 and np.all(np.abs(ep["actions"]) <= 1.0)
        for t in range(200):
            np.testing.assert_array_equal(obs, ep["observations"][t])
            obs, r, *_ = env.step(ep["actions"][t] * np.float32(ds.action_scale))
            assert np.float32(r) == ep["rewards"][t]


def test_embedded_graded_quality():
    means = {}
    for name in ("random", "medium-replay", "medium", "expert", "medium-expert"):
        ds = embedded.load_embedded("pendulum-" + name, n_episodes=20, cache=False)
        means[name] = ds.episode_returns().mean()
    assert means["random"] < means["medium-replay"] < means["medium"] < means["expert"]
    assert means["medium"] < means["medium-expert"] < means["expert"]
    replay = embedded.load_embedded("pendulum-medium-replay", n_episodes=40, cache=False)
    returns = replay.episode_returns()  # (40,) in generation order: skill rising 0 -> 0.5
    assert returns[:10].mean() < returns[-10:].mean() - 300.0
    score = normalized_score("embedded:pendulum-medium", means["medium"])
    assert 30.0 < score < 55.0  # "medium": a third to half of the way from random to expert
    assert means["expert"] > -200.0


def test_reference_returns_remeasured():
    """The hard-coded references agree with fresh episodes (other reset seeds than the
    measurement's 0..999) within 4 standard errors of the re-measured mean."""
    n = 100
    for skill, ref in ((0.0, embedded.PENDULUM_RANDOM_RETURN), (1.0, embedded.PENDULUM_EXPERT_RETURN)):
        eps = embedded.rollout(np.full(n, skill), np.arange(50_000, 50_000 + n), np.random.default_rng(7))
        rets = np.array([ep["rewards"].sum(dtype=np.float64) for ep in eps])
        sem = rets.std(ddof=1) / np.sqrt(n)
        assert abs(rets.mean() - ref) < 4 * sem, (skill, rets.mean(), ref, sem)


def test_behaviour_policies():
    obs = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.5], [0.9, 0.3, -1.0]], np.float32)
    expert = embedded.behaviour_policy("expert")
    a = expert(obs)
    assert a.shape == (3, 1) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
    np.testing.assert_allclose(a[:, 0], embedded.expert_torque(obs) / 2.0, rtol=1e-6)
    assert a[0, 0] == 0.0  # upright at rest: no torque
    assert embedded.behaviour_policy("embedded:pendulum-random")(obs).shape == (3, 1)
    with pytest.raises(ValueError, match="medium-replay"):
        embedded.behaviour_policy("medium-replay")


@pytest.mark.parametrize("skill", [0.6, 0.9])
def test_behaviour_noise_is_gaussian_around_expert(skill):
    """Skill s adds N(0, (NOISE_SCALE (1 - s) / s)^2) torque to the expert's: upright at rest
    (expert torque 0, clipping rare at these skills) the actions' mean is 0 and their std that."""
    policy = embedded.PendulumPolicy(skill, seed=1)
    torque = policy(np.tile([[1.0, 0.0, 0.0]], (20_000, 1)))[:, 0] * embedded.ACTION_SCALE  # (n,)
    std = embedded.NOISE_SCALE * (1.0 - skill) / skill
    clipped = np.clip(np.random.default_rng(0).normal(0.0, std, 200_000), -2.0, 2.0)
    assert abs(torque.mean()) < 4 * torque.std() / np.sqrt(len(torque))
    assert abs(torque.std() - clipped.std()) < 0.02 * clipped.std()
    assert embedded.PendulumPolicy(0.0)(np.zeros((4000, 3))).std() > 0.5  # uniform on [-1, 1]: 0.577


# ---- sampler ------------------------------------------------------------------------------

def sampler_dataset():
    # Episode e, step t: observation (100 e + t, 7) (the second dim is constant: std 0),
    # action 0.1 (t + 1) * (-1)^e, rewards 1..T.
    eps = []
    for e, T in enumerate((3, 5)):
        t = np.arange(T, dtype=np.float32)
        eps.append({"observations": np.stack([100 * e + t, np.full(T, 7.0, np.float32)], 1),
                    "actions": (0.1 * (t + 1) * (-1) ** e)[:, None],
                    "rewards": t + 1})
    return TrajectoryDataset(eps, name="toy", reward_scale=10.0, max_ep_len=4)


def test_sampler_hand_computed_segments():
    ds = sampler_dataset()
    mean = np.array([50.0, 7.0], np.float32)
    std = np.array([2.0, 0.0], np.float32)
    sp = SegmentSampler(ds, context_len=4, reward_scale=10.0, state_mean=mean, state_std=std)
    out = sp.segments([1, 0, 1], [3, 0, 0])
    assert out["states"].shape == (3, 4, 2) and out["actions"].shape == (3, 4, 1)
    assert out["returns_to_go"].shape == (3, 4, 1) and out["timesteps"].shape == (3, 4)
    assert out["mask"].dtype == torch.bool and out["timesteps"].dtype == torch.long
    # Episode 1 (T 5, rewards 1..5, return-to-go 15 14 12 9 5) from step 3: two real steps
    # (t = 3, 4) LEFT-padded by two.
    torch.testing.assert_close(out["mask"][0], torch.tensor([False, False, True, True]))
    torch.testing.assert_close(out["states"][0], torch.tensor(
        [[0.0, 0.0], [0.0, 0.0], [(103 - 50) / 2, 0.0], [(104 - 50) / 2, 0.0]]))
    torch.testing.assert_close(out["actions"][0, :, 0], torch.tensor([PAD_ACTION, PAD_ACTION, -0.4, -0.5]))
    torch.testing.assert_close(out["returns_to_go"][0, :, 0], torch.tensor([0.0, 0.0, 0.9, 0.5]))
    torch.testing.assert_close(out["timesteps"][0], torch.tensor([0, 0, 3, 3]))  # 4 clamped to max_ep_len-1
    # Episode 0 (T 3, return-to-go 6 5 3) from step 0: three real steps, one pad.
    torch.testing.assert_close(out["mask"][1], torch.tensor([False, True, True, True]))
    torch.testing.assert_close(out["states"][1, :, 0], torch.tensor([0.0, -25.0, -24.5, -24.0]))
    torch.testing.assert_close(out["actions"][1, :, 0], torch.tensor([PAD_ACTION, 0.1, 0.2, 0.3]))
    torch.testing.assert_close(out["returns_to_go"][1, :, 0], torch.tensor([0.0, 0.6, 0.5, 0.3]))
    torch.testing.assert_close(out["timesteps"][1], torch.tensor([0, 0, 1, 2]))
    # Episode 1 from step 0: a full window, no padding.
    assert out["mask"][2].all()
    torch.testing.assert_close(out["returns_to_go"][2, :, 0], torch.tensor([1.5, 1.4, 1.2, 0.9]))
    torch.testing.assert_close(out["timesteps"][2], torch.tensor([0, 1, 2, 3]))
    with pytest.raises(IndexError):
        sp.segments([0], [3])


def test_sampler_sampling_distribution_and_determinism():
    ds = sampler_dataset()
    sp = SegmentSampler(ds, context_len=4, reward_scale=10.0, state_mean=np.zeros(2), state_std=np.ones(2))
    assert sp.state_std[1] == 1.0
    batch = sp.sample(20000)
    first = batch["states"][:, :, 0][batch["mask"]].reshape(-1)  # unnormalized obs dim 0
    # Recover (episode, start) from the first real step of every window.
    first_real = batch["states"][torch.arange(20000), (~batch["mask"]).sum(1), 0]
    episode = (first_real >= 100).long()
    frac = episode.float().mean().item()
    assert abs(frac - 5 / 8) < 0.02  # proportional to length (standard error 0.0034)
    starts = (first_real - 100 * episode).long()
    for e, T in enumerate((3, 5)):
        counts = torch.bincount(starts[episode == e], minlength=T)
        assert len(counts) == T and (counts > 0).all()  # every start step occurs
    assert first.numel() > 0
    # Padded steps carry exactly the documented values.
    pad = ~batch["mask"]
    assert pad.any()
    assert (batch["states"][pad] == 0).all() and (batch["returns_to_go"][pad] == 0).all()
    assert (batch["actions"][pad] == PAD_ACTION).all() and (batch["timesteps"][pad] == 0).all()
    # Same seed -> same batch; an explicit generator overrides the sampler's own.
    b1 = SegmentSampler(ds, 4, 10.0, None, None, seed=5).sample(8)
    b2 = SegmentSampler(ds, 4, 10.0, None, None, seed=5).sample(8)
    b3 = SegmentSampler(ds, 4, 10.0, None, None, seed=0).sample(8, generator=torch.Generator().manual_seed(5))
    for k in b1:
        assert torch.equal(b1[k], b2[k]) and torch.equal(b1[k], b3[k])


def test_sampler_defaults_to_dataset_stats():
    ds = sampler_dataset()
    sp = SegmentSampler(ds, context_len=2, reward_scale=None, state_mean=None, state_std=None)
    mean, std = ds.state_stats()
    np.testing.assert_allclose(sp.state_mean, mean)
    assert sp.state_std[1] == pytest.approx(1e-6)  # std 0 clamped, normalized states stay finite
    assert sp.reward_scale == 10.0
    assert torch.isfinite(sp.sample(64)["states"]).all()


# ---- normalized score ---------------------------------------------------------------------

@pytest.mark.parametrize("name,refs", [
    ("hopper-medium-v2", (-20.272305, 3234.3)),
    ("d4rl:halfcheetah-medium-replay-v2", (-280.178953, 12135.0)),
    ("Walker2d-v5", (1.629008, 4592.3)),
    ("ant-expert-v2", (-325.6, 3879.7)),
    ("antmaze-umaze-v2", (0.0, 1.0)),
    ("embedded:pendulum-medium", (embedded.PENDULUM_RANDOM_RETURN, embedded.PENDULUM_EXPERT_RETURN)),
    ("Pendulum-v1", (embedded.PENDULUM_RANDOM_RETURN, embedded.PENDULUM_EXPERT_RETURN)),
])
def test_normalized_score_of_references(name, refs):
    assert normalized_score(name, refs[0]) == pytest.approx(0.0, abs=1e-9)
    assert normalized_score(name, refs[1]) == pytest.approx(100.0)
    np.testing.assert_allclose(normalized_score(name, np.array(refs)), [0.0, 100.0], atol=1e-9)


def test_normalized_score_of_dataset_and_unknown():
    ds = small_dataset()  # references (-5, 5)
    assert normalized_score(ds, 0.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no reference returns for 'CartPole-v1'"):
        normalized_score("CartPole-v1", 1.0)


# ---- Minari -------------------------------------------------------------------------------

def test_minari_dataset_loads(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari", reason="minari is not installed (pip install minari)")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    # Episodes recorded from the real env into Minari's own EpisodeBuffer and written by
    # minari.create_dataset_from_buffers (its DataCollector needs jax: minari[create]).
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1", max_episode_steps=12)
    policy = embedded.behaviour_policy("medium")
    buffers, seen = [], []
    for i in range(3):
        obs, _ = env.reset(seed=i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while not (terms and (terms[-1] or truncs[-1])):
            act = policy(obs)[0] * np.float32(2.0)
            obs, r, term, trunc, _ = env.step(act)
            observations.append(obs), actions.append(act), rewards.append(r)
            terms.append(term), truncs.append(trunc)
        buffers.append(EpisodeBuffer(id=i, seed=i, observations=observations, actions=actions,
                                     rewards=rewards, terminations=terms, truncations=truncs, infos={}))
        seen.append((np.stack(observations), np.stack(actions), np.array(rewards)))
    info = dict(env=env, eval_env="Pendulum-v1", algorithm_name="scripted", author="dmm tests", author_email="none",
                code_permalink="none", description="tiny test dataset")
    minari.create_dataset_from_buffers("dmmtest/pendulum/tiny-v0", buffers, **info)
    minari.create_dataset_from_buffers("dmmtest/pendulum/tinyref-v0", buffers, **info,
                                       ref_min_score=-1000.0, ref_max_score=-100.0)
    assert load_dataset("minari:dmmtest/pendulum/tinyref-v0").reference_returns == (-1000.0, -100.0)
    ds = load_dataset("minari:dmmtest/pendulum/tiny-v0")
    assert len(ds) == 3 and ds.num_steps == 36
    # env and limit of the evaluation env (200 steps), not of the collection env (12)
    assert ds.env_id == "Pendulum-v1" and ds.action_scale == 2.0 and ds.max_ep_len == 200
    assert ds.reference_returns == (embedded.PENDULUM_RANDOM_RETURN, embedded.PENDULUM_EXPERT_RETURN)
    for ep, (obs, act, rew) in zip(ds.episodes, seen):
        np.testing.assert_array_equal(ep["observations"], obs[:-1])  # Minari's T+1st dropped
        np.testing.assert_allclose(ep["actions"], act / 2.0)
        np.testing.assert_allclose(ep["rewards"], rew, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_dataset("minari:dmmtest/pendulum/absent-v0")
