"""Evaluator: window mode is the paper's re-run protocol, recurrent mode matches the full
forward on the episode prefix, scores and errors."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from dmm import build_model
from dmm.evaluate import env_seeds, evaluate_model, normalize, run_episodes

EPISODES, HORIZON, SCALE, TARGET, ACTION_SCALE = 3, 14, 100.0, -200.0, 2.0
MEAN = np.array([0.1, -0.2, 0.3], np.float32)
STD = np.array([0.7, 0.8, 2.0], np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")


def short_envs(n=EPISODES):
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=HORIZON) for _ in range(n)])


def tiny(kind="dmm", **kw):
    torch.manual_seed(0)
    cfg = {"model": kind, "state_dim": 3, "act_dim": 1, "d_model": 16, "n_layers": 2,
           "context_len": 4, "max_ep_len": 200, **kw}
    if kind == "dmm":
        cfg.update(window=3)
    return build_model(cfg).eval()


def record(model, mode, action_pad=-10.0):
    actions = []
    run_episodes(model, "Pendulum-v1", episodes=EPISODES, target_return=TARGET,
                 reward_scale=SCALE, state_mean=MEAN, state_std=STD, mode=mode,
                 action_pad=action_pad, action_scale=ACTION_SCALE, seed=3, envs=short_envs(),
                 on_step=lambda t, obs, rtg, act: actions.append((obs.copy(), rtg.clone(), act.clone())))
    return actions


def paper_protocol(model, action_pad):
    """The paper's evaluation loop, written out: keep full histories; every step feed the
    last K steps, left padded as in training, and take the last prediction."""
    K = model.context_len
    envs = [gym.make("Pendulum-v1", max_episode_steps=HORIZON) for _ in range(EPISODES)]
    obs = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, env_seeds(3, EPISODES))])
    hist_s, hist_a, hist_r = [], [], []
    rtg = np.full(EPISODES, TARGET / SCALE)
    out = []
    for t in range(HORIZON):
        hist_s.append((obs - MEAN) / STD)
        hist_a.append(np.zeros((EPISODES, 1)))
        hist_r.append(rtg.copy())
        lo = max(0, t + 1 - K)
        n_pad = K - (t + 1 - lo)
        s = np.concatenate([np.zeros((n_pad, EPISODES, 3)), np.stack(hist_s[lo:])])
        a = np.concatenate([np.full((n_pad, EPISODES, 1), action_pad), np.stack(hist_a[lo:])])
        r = np.concatenate([np.zeros((n_pad, EPISODES)), np.stack(hist_r[lo:])])
        ts = np.concatenate([np.zeros(n_pad), np.arange(lo, t + 1)])
        mask = np.arange(K) >= n_pad
        f = lambda x: torch.tensor(np.swapaxes(x, 0, 1), dtype=torch.float32)
        with torch.no_grad():
            act = model(f(s), f(a), f(r)[..., None],
                        timesteps=torch.tensor(ts, dtype=torch.long).expand(EPISODES, K),
                        attention_mask=torch.tensor(mask).expand(EPISODES, K))[:, -1]
        out.append(act)
        hist_a[-1] = act.numpy()
        steps = [e.step(a_i * ACTION_SCALE) for e, a_i in zip(envs, act.numpy())]
        obs = np.stack([s[0] for s in steps])
        rtg = rtg - np.array([s[1] for s in steps]) / SCALE
    return out


@pytest.mark.parametrize("kind,action_pad", [("dmm", -10.0), ("dmm", 0.0), ("dt", -10.0)])
def test_window_mode_is_the_paper_protocol(kind, action_pad):
    model = tiny(kind, timestep_embedding=True) if kind == "dmm" else tiny(kind)
    ours = record(model, "window", action_pad)
    ref = paper_protocol(model, action_pad)
    assert len(ours) == len(ref) == HORIZON
    for t, ((_, _, a), b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {t}")


def test_window_mode_uses_the_action_pad():
    model = tiny("dmm")
    a = record(model, "window", -10.0)
    b = record(model, "window", 0.0)
    # the pad only matters while the window still holds padded steps
    assert not torch.allclose(a[1][2], b[1][2])


def test_recurrent_mode_matches_full_forward_on_the_prefix():
    model = tiny("dmm", timestep_embedding=True)
    steps = record(model, "recurrent")
    states = torch.stack([torch.tensor((o - MEAN) / STD, dtype=torch.float32) for o, _, _ in steps], 1)
    rtg = torch.stack([r for _, r, _ in steps], 1)                              # (n, T, 1)
    acts = torch.stack([a for _, _, a in steps], 1)                             # (n, T, A)
    n, T = states.shape[:2]
    for t in range(T):
        with torch.no_grad():
            full = model(states[:, :t + 1], acts[:, :t + 1], rtg[:, :t + 1],
                         timesteps=torch.arange(t + 1).expand(n, t + 1))[:, -1]
        torch.testing.assert_close(acts[:, t], full, rtol=1e-4, atol=1e-5, msg=f"step {t}")
    # the recurrent context is the whole episode: beyond K steps it differs from the window
    window = record(model, "window")
    assert not torch.allclose(window[-1][2], steps[-1][2])


def test_recurrent_mode_rejects_the_transformer():
    with pytest.raises(ValueError, match="use --mode window"):
        record(tiny("dt"), "recurrent")


def test_returns_scores_and_rtg_bookkeeping():
    model = tiny("dmm")
    info = {"name": "pendulum-medium-replay", "env_id": "Pendulum-v1", "max_ep_len": 200,
            "action_scale": ACTION_SCALE, "reference_returns": None}
    res = evaluate_model(model, info, state_mean=MEAN, state_std=STD, reward_scale=SCALE,
                         episodes=2, target_return=[TARGET, 2 * TARGET], seeds=[0, 1])
    assert res["episodes"] == 4 and len(res["targets"]) == 2
    assert [t["target_return"] for t in res["targets"]] == [TARGET, 2 * TARGET]
    rets = np.array(res["returns"])
    np.testing.assert_allclose(res["scores"], normalize(info, rets))
    assert res["score_mean"] == pytest.approx(np.mean(res["scores"]))
    assert res["length_mean"] == 200  # Pendulum's time limit
    assert res["best_target_score"] == max(t["score_mean"] for t in res["targets"])
    # rtg decreases by reward / reward_scale each step
    steps = record(model, "window")
    assert steps[0][1].flatten().tolist() == pytest.approx([TARGET / SCALE] * EPISODES)
    assert torch.all(steps[1][1] >= steps[0][1])  # Pendulum rewards are <= 0


def test_unknown_reference_without_stored_returns_gives_no_score():
    info = {"name": "my-own-task", "reference_returns": None}
    assert normalize(info, np.array([1.0])) is None
    info["reference_returns"] = [0.0, 10.0]
    np.testing.assert_allclose(normalize(info, np.array([5.0])), [50.0])
