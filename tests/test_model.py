"""DecisionMetaMamba, RecurrentPolicy, window_action, DecisionTransformer, build_model and the
checkpoint converter. float64 + eval() wherever two computations are compared; tiny shapes."""
import pytest
import torch
import torch.nn.functional as F

from dmm import DecisionMetaMamba, DecisionTransformer, action_loss, build_model
from dmm.convert import MODALITIES, _mixer_from_paper, from_paper, load_paper_checkpoint, to_paper
from dmm.nn import MIXERS, ModalMixer
from dmm_kernels.reference import selective_scan_ref

S, A, D = 5, 3, 16


def make_model(mixer="conv", preset="v1", seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"d_model": D, "n_layers": 2, "context_len": 4, "window": 3, "dropout": 0.0, **kw}
    model = DecisionMetaMamba(S, A, mixer=mixer, preset=preset, **kw).double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every parameter off its init so zero biases hide nothing
        for name, p in model.named_parameters():
            if not name.endswith("A_log"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def episode(B=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, T, S, generator=g, dtype=torch.float64),
        "actions": torch.rand(B, T, A, generator=g, dtype=torch.float64) * 2 - 1,
        "returns_to_go": torch.randn(B, T, 1, generator=g, dtype=torch.float64),
        "timesteps": torch.arange(T).repeat(B, 1) + torch.tensor([[0], [7]]),
    }


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_shapes(mixer, preset):
    model = make_model(mixer, preset)
    ep = episode()
    pred = model(**ep, attention_mask=torch.ones(2, 6, dtype=torch.bool))
    assert pred.shape == (2, 6, A) and pred.abs().max() <= 1
    with pytest.raises(ValueError, match="returns_to_go"):
        model(ep["states"], ep["actions"], ep["returns_to_go"][..., 0])


@pytest.mark.parametrize("mixer,preset,timestep_embedding", [
    (m, "v1", False) for m in MIXERS] + [("dense", "v2", False), ("conv", "v1", True)])
def test_recurrent_policy_equals_forward(mixer, preset, timestep_embedding):
    model = make_model(mixer, preset, timestep_embedding=timestep_embedding)
    ep = episode(T=5)
    policy = model.recurrent_policy(2)
    for t in range(5):
        act = policy.act(ep["states"][:, t], ep["returns_to_go"][:, t], ep["timesteps"][:, t])
        prefix = {k: v[:, :t + 1] for k, v in ep.items()}
        with torch.no_grad():
            expected = model(**prefix)[:, -1]
        torch.testing.assert_close(act, expected, rtol=1e-9, atol=1e-10)
        policy.observe_action(ep["actions"][:, t])


def test_recurrent_policy_protocol_and_reset():
    model = make_model("double-conv")
    ep = episode(T=3)
    policy = model.recurrent_policy(2)
    first = policy.act(ep["states"][:, 0], ep["returns_to_go"][:, 0])
    with pytest.raises(RuntimeError, match="observe_action"):
        policy.act(ep["states"][:, 0], ep["returns_to_go"][:, 0])
    policy.observe_action(ep["actions"][:, 0])
    with pytest.raises(RuntimeError, match="act"):
        policy.observe_action(ep["actions"][:, 0])
    policy.act(ep["states"][:, 1], ep["returns_to_go"][:, 1])
    policy.observe_action(ep["actions"][:, 1])
    # Row 1 starts a new episode: it must act as from a fresh cache, row 0 must go on.
    policy.reset(torch.tensor([False, True]))
    fresh = model.recurrent_policy(2)
    out = policy.act(ep["states"][:, 0], ep["returns_to_go"][:, 0])
    torch.testing.assert_close(out[1], first[1], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out[0], fresh.act(ep["states"][:, 0], ep["returns_to_go"][:, 0])[0])
    policy.reset()
    torch.testing.assert_close(policy.act(ep["states"][:, 0], ep["returns_to_go"][:, 0]), first)


@pytest.mark.parametrize("T", [2, 4, 7])
@pytest.mark.parametrize("kind", ["dmm", "dt"])
def test_window_action_is_padded_forward(kind, T):
    K = 4
    if kind == "dmm":
        model = make_model("line", timestep_embedding=True)
    else:
        torch.manual_seed(0)
        model = DecisionTransformer(S, A, d_model=D, n_layers=2, n_heads=2, context_len=K,
                                    dropout=0.0).double().eval()
    ep = episode(T=T)
    got = model.window_action(ep["states"], ep["actions"], ep["returns_to_go"], ep["timesteps"])
    pad = max(K - T, 0)
    last = {k: v[:, -K:] for k, v in ep.items()}
    padded = {
        "states": torch.cat([torch.zeros(2, pad, S, dtype=torch.float64), last["states"]], 1),
        "actions": torch.cat([torch.full((2, pad, A), -10.0, dtype=torch.float64), last["actions"]], 1),
        "returns_to_go": torch.cat([torch.zeros(2, pad, 1, dtype=torch.float64), last["returns_to_go"]], 1),
        "timesteps": torch.cat([torch.zeros(2, pad, dtype=torch.long), last["timesteps"]], 1),
        "attention_mask": torch.arange(K).repeat(2, 1) >= pad,
    }
    with torch.no_grad():
        expected = model(**padded)[:, -1]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)  # slicing: fp64 ulps


@pytest.mark.parametrize("mixer", ["conv", "double-line", "dense", "none"])
def test_causality(mixer):
    model = make_model(mixer)
    ep = episode(T=5)
    base = model(**ep)
    t = 2
    # a_t and everything later must not move predictions 0..t; s_t must move prediction t.
    for key, sl in (("actions", slice(t, None)), ("states", slice(t + 1, None)),
                    ("returns_to_go", slice(t + 1, None))):
        changed = {k: v.clone() for k, v in ep.items()}
        changed[key][:, sl] += 3.0
        out = model(**changed)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    changed = {k: v.clone() for k, v in ep.items()}
    changed["states"][:, t] += 3.0
    assert not torch.allclose(model(**changed)[:, t], base[:, t])


@pytest.mark.parametrize("kind", ["dmm-conv", "dmm-none", "dmm-v2-faithful", "dt"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    if kind == "dt":
        model = DecisionTransformer(S, A, d_model=D, n_layers=2, n_heads=2, context_len=4).double()
    elif kind == "dmm-v2-faithful":
        model = make_model(preset="v2", faithful=True, timestep_embedding=True, dropout=0.1)
    else:
        model = make_model(kind.removeprefix("dmm-"), dropout=0.1)
    model.train()
    ep = episode(T=4)
    mask = torch.tensor([[False, True, True, True], [True] * 4])
    action_loss(model(**ep, attention_mask=mask), ep["actions"], mask).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_action_loss():
    pred = torch.tensor([[[0.5], [0.0]], [[1.0], [-1.0]]])
    target = torch.zeros(2, 2, 1)
    mask = torch.tensor([[True, False], [True, True]])
    assert action_loss(pred, target, mask).item() == pytest.approx((0.25 + 1 + 1) / 3)
    assert action_loss(pred, target).item() == pytest.approx((0.25 + 1 + 1) / 4)


def test_faithful_v2_shares_norms_and_share_mixer():
    model = DecisionMetaMamba(S, A, d_model=D, n_layers=3, preset="v2", faithful=True,
                              share_mixer=True)
    b0, b1, b2 = model.blocks
    assert b1.norm1 is b0.norm1 and b2.norm2 is b0.norm2 and b2.mixer1 is b0.mixer1
    assert b0.norm1 is not b0.norm2
    assert torch.equal(b1.dt_proj.bias, torch.zeros_like(b1.dt_proj.bias))
    plain = DecisionMetaMamba(S, A, d_model=D, n_layers=3, preset="v2")
    assert plain.blocks[1].norm1 is not plain.blocks[0].norm1
    n_shared = sum(p.numel() for p in model.parameters())
    assert n_shared < sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match="share_mixer"):
        DecisionMetaMamba(S, A, d_model=D, mixer="double-conv", share_mixer=True)


@pytest.mark.parametrize("model", [
    lambda: make_model("double-conv", timestep_embedding=True),
    lambda: make_model(preset="v2", faithful=True, share_mixer=True),
    lambda: DecisionTransformer(S, A, d_model=D, n_layers=1, n_heads=2, context_len=4).double().eval(),
])
def test_build_model_round_trip(model):
    model = model()
    rebuilt = build_model(model.config).double().eval()
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    ep = episode(T=4)
    torch.testing.assert_close(rebuilt(**ep), model(**ep), rtol=0, atol=0)
    with pytest.raises(ValueError, match="model"):
        build_model({**model.config, "model": "lstm"})


def test_decision_transformer():
    torch.manual_seed(0)
    dt = DecisionTransformer(S, A, d_model=D, n_layers=2, n_heads=2, context_len=4,
                             dropout=0.0).double().eval()
    ep = episode(T=4)
    mask = torch.tensor([[False, False, True, True], [True] * 4])
    base = dt(**ep, attention_mask=mask)
    assert base.shape == (2, 4, A) and torch.isfinite(base).all()
    # Padded steps are hidden from the real ones; causality holds.
    changed = {k: v.clone() for k, v in ep.items()}
    changed["states"][0, :2] += 5.0
    changed["actions"][:, 3] += 5.0
    out = dt(**changed, attention_mask=mask)
    torch.testing.assert_close(out[0, 2:], base[0, 2:], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=1e-12)
    with pytest.raises(NotImplementedError, match="window_action"):
        dt.recurrent_policy(2)


# ---- converter ------------------------------------------------------------------------------
# The authors' v1 code (gym/models/decision_metamamba.py and their mamba_ssm/modules/
# mamba_simple.py), written out from a state dict in their names: float64, eval (no dropout).
def paper_mixer(sd, prefix, x, window):
    """MultiModalConv1d / MultiModalLine.forward as their file writes it. x: (B, L, D).

    The conv mixer works on (B, D, L) and its [:, :, m::3] selects TOKENS; the line mixer applies
    the same [:, :, m::3] to a (B, L, D) tensor, which selects output CHANNELS."""
    D = x.shape[-1]
    if f"{prefix}.rtg_conv1d.weight" in sd:
        xp = F.pad(x, (0, 0, window - 1, 0)).transpose(1, 2)              # (B, D, L+W-1)
        out = torch.zeros_like(x).transpose(1, 2)                          # (B, D, L)
        for m, name in enumerate(MODALITIES):
            y = F.conv1d(xp, sd[f"{prefix}.{name}_conv1d.weight"],
                         sd[f"{prefix}.{name}_conv1d.bias"], groups=D)     # (B, D, L)
            out[:, :, m::3] = y[:, :, m::3]
        return out.transpose(1, 2)
    xp = F.pad(x, (0, 0, window - 1, 0))                                   # (B, L+W-1, D)
    xp = torch.flatten(xp.unfold(1, window, 1).transpose(2, 3), start_dim=2)  # (B, L, W*D)
    out = torch.zeros_like(x)                                              # (B, L, D)
    for m, name in enumerate(MODALITIES):
        y = F.linear(xp, sd[f"{prefix}.{name}_lin.weight"])                # (B, L, D)
        out[:, :, m::3] = y[:, :, m::3]
    return out


def paper_block(sd, p, h, window):
    """Their Mamba.forward (no inference_params): mixer, residual, SSM; + h1 for double mixers."""
    D = h.shape[-1]
    u = F.layer_norm(h, (D,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"])
    h1 = h + paper_mixer(sd, f"{p}.multimodal_token_mixer_1", u, window)
    v = F.layer_norm(h1, (D,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"])
    x, z = F.linear(v, sd[f"{p}.in_proj.weight"]).chunk(2, dim=-1)        # (B, L, E) each
    double = any(k.startswith(f"{p}.multimodal_token_mixer_2.") for k in sd)
    x = F.silu(paper_mixer(sd, f"{p}.multimodal_token_mixer_2", x, window) if double else x)
    R, N = sd[f"{p}.dt_proj.weight"].shape[1], sd[f"{p}.A_log"].shape[1]
    dt, Bc, Cc = F.linear(x, sd[f"{p}.x_proj.weight"]).split([R, N, N], dim=-1)
    dt = dt @ sd[f"{p}.dt_proj.weight"].T
    y = selective_scan_ref(x.transpose(1, 2), dt.transpose(1, 2), -torch.exp(sd[f"{p}.A_log"]),
                           Bc.transpose(1, 2), Cc.transpose(1, 2), sd[f"{p}.D"],
                           z.transpose(1, 2), sd[f"{p}.dt_proj.bias"], delta_softplus=True)
    out = F.linear(y.transpose(1, 2), sd[f"{p}.out_proj.weight"])
    return out + h1 if double else out


def paper_v1_forward(sd, states, actions, returns_to_go, window, **_):
    """Their DecisionMetaMamba.forward: interleave, embed_ln, layers, ln_f, action at s_t."""
    B, K = states.shape[:2]
    D = sd["embed_ln.weight"].shape[0]
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    emb = [F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"]) for x, name in
           ((returns_to_go, "embed_return"), (states, "embed_state"), (actions, "embed_action"))]
    h = torch.stack(emb, dim=1).permute(0, 2, 1, 3).reshape(B, 3 * K, D)
    h = F.layer_norm(h, (D,), sd["embed_ln.weight"], sd["embed_ln.bias"])
    for i in range(n_layers):
        h = paper_block(sd, f"model.layers.{i}", h, window)
    h = F.layer_norm(h, (D,), sd["model.ln_f.weight"], sd["model.ln_f.bias"])
    h = h.reshape(B, K, 3, D).permute(0, 2, 1, 3)
    return torch.tanh(F.linear(h[:, 1], sd["predict_action.0.weight"], sd["predict_action.0.bias"]))


def random_paper_v1_sd(mixer, window=3, n_layers=2, d_state=4, seed=0):
    """A random checkpoint in the authors' v1 names and shapes (expand 2)."""
    g = torch.Generator().manual_seed(seed)
    E, R = 2 * D, -(-D // 16)

    def rand(*shape, scale=None):
        scale = shape[-1] ** -0.5 if scale is None else scale
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    sd = {"embed_return.weight": rand(D, 1, scale=1.0), "embed_return.bias": rand(D, scale=0.1),
          "embed_state.weight": rand(D, S), "embed_state.bias": rand(D, scale=0.1),
          "embed_action.weight": rand(D, A), "embed_action.bias": rand(D, scale=0.1),
          "predict_action.0.weight": rand(A, D), "predict_action.0.bias": rand(A, scale=0.1)}
    for norm in ("embed_ln", "model.ln_f"):
        sd[f"{norm}.weight"], sd[f"{norm}.bias"] = 1 + rand(D, scale=0.1), rand(D, scale=0.1)
    kind = mixer.removeprefix("double-")
    for i in range(n_layers):
        p = f"model.layers.{i}"
        for j, width in ((1, D), (2, E))[:2 if mixer.startswith("double") else 1]:
            for name in MODALITIES:
                q = f"{p}.multimodal_token_mixer_{j}.{name}"
                if kind == "conv":
                    sd[f"{q}_conv1d.weight"] = rand(width, 1, window)
                    sd[f"{q}_conv1d.bias"] = rand(width, scale=0.1)
                else:
                    sd[f"{q}_lin.weight"] = rand(width, window * width)
        for norm in ("ln_1", "ln_2"):
            sd[f"{p}.{norm}.weight"], sd[f"{p}.{norm}.bias"] = 1 + rand(D, scale=0.1), rand(D, scale=0.1)
        sd.update({f"{p}.in_proj.weight": rand(2 * E, D), f"{p}.x_proj.weight": rand(R + 2 * d_state, E),
                   f"{p}.dt_proj.weight": rand(E, R), f"{p}.dt_proj.bias": rand(E, scale=0.5) - 3,
                   f"{p}.A_log": torch.log(torch.arange(1, d_state + 1, dtype=torch.float64)).repeat(E, 1),
                   f"{p}.D": 1 + rand(E, scale=0.1), f"{p}.out_proj.weight": rand(D, E)})
    return sd


@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_converted_v1_checkpoint_gives_the_authors_forward(mixer):
    """A checkpoint of theirs, converted, computes their forward (the line mixers included:
    their channel slice is one matrix W[d] = W_(d mod 3)[d] for every token)."""
    sd = random_paper_v1_sd(mixer)
    ep = episode(T=5)
    model = load_paper_checkpoint(sd, context_len=5, dropout=0.0).eval()
    assert model.config["mixer"] == mixer and model.config["faithful"]
    with torch.no_grad():
        expected = paper_v1_forward(sd, **ep, window=3)
        torch.testing.assert_close(model(**ep), expected, rtol=1e-12, atol=1e-13)
        # The combined matrix in all three slots is exact in the per-token mixer as well.
        per_token = load_paper_checkpoint(sd, context_len=5, dropout=0.0, faithful=False).eval()
        torch.testing.assert_close(per_token(**ep), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mixer", ["line", "double-line"])
def test_faithful_line_trains_the_authors_function(mixer):
    """faithful=True: the same loss and the same gradient for every parameter as their code on
    the same weights (exported with to_paper), so training follows theirs step for step."""
    model = make_model(mixer, faithful=True)
    ep = episode(T=4)
    paper_sd = {k: v.detach().clone().requires_grad_()
                for k, v in to_paper(model.state_dict(), model.config).items()}
    ours = model(**ep)
    theirs = paper_v1_forward(paper_sd, **ep, window=3)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-13)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    our_grads = to_paper({n: p.grad for n, p in model.named_parameters()}, model.config)
    assert our_grads.keys() == paper_sd.keys()
    for k, g in our_grads.items():
        torch.testing.assert_close(g, paper_sd[k].grad, rtol=1e-10, atol=1e-12, msg=k)
    # Rows outside a modality's channel slice are unused (zero gradient), as in their model.
    w = model.blocks[0].mixer1.weight.grad                               # (3, D, W*D)
    used = torch.arange(D)[None, :] % 3 == torch.arange(3)[:, None]     # (3, D)
    assert (w[~used] == 0).all() and (w[used].abs().sum(-1) > 0).all()


def test_per_token_line_differs_from_the_authors_and_is_not_exported():
    """The default line mixer is the paper's text (per token); their code computes another
    function, so exporting it would silently change the model."""
    faithful, per_token = make_model("line", faithful=True), make_model("line")
    per_token.load_state_dict(faithful.state_dict())
    ep = episode(T=4)
    assert not torch.allclose(per_token(**ep), faithful(**ep))
    with pytest.raises(ValueError, match="per-token 'line' mixer has no counterpart"):
        to_paper(per_token.state_dict(), per_token.config)


@pytest.mark.parametrize("kind", ["conv", "line"])
def test_converter_matches_paper_mixer(kind):
    W, B, L = 3, 2, 7
    sd = {k.removeprefix("model.layers.0.multimodal_token_mixer_1").replace(".", "p.", 1): v
          for k, v in random_paper_v1_sd(kind, window=W).items()
          if k.startswith("model.layers.0.multimodal_token_mixer_1.")}
    ours, got_kind = _mixer_from_paper(sd, "p")
    assert got_kind == kind
    x = torch.randn(B, L, D, dtype=torch.float64)
    for sliced in ([False, True] if kind == "line" else [False]):
        mixer = ModalMixer(D, kind, W, channel_sliced=sliced, dtype=torch.float64)
        mixer.load_state_dict(ours)
        with torch.no_grad():
            torch.testing.assert_close(mixer(x), paper_mixer(sd, "p", x, W), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixer,preset", [
    ("conv", "v1"), ("line", "v1"), ("double-conv", "v1"), ("double-line", "v1"), ("dense", "v2")])
def test_converter_round_trip(mixer, preset):
    model = make_model(mixer, preset, faithful=preset == "v2" or "line" in mixer)
    paper_sd = to_paper(model.state_dict(), model.config)
    # The authors' names, spot-checked by hand.
    if preset == "v1":
        assert "model.layers.1.ln_1.weight" in paper_sd and "model.layers.0.dt_proj.bias" in paper_sd
        tail = "conv1d.weight" if mixer.endswith("conv") else "lin.weight"
        assert f"model.layers.0.multimodal_token_mixer_1.obs_{tail}" in paper_sd
        assert (f"model.layers.1.multimodal_token_mixer_2.act_{tail}" in paper_sd) == mixer.startswith("double")
    else:
        assert {"model.ln_1.weight", "model.ln_2.bias", "model.local_sequence_mixers.1.lin.weight",
                "model.global_sequence_mixers.1.A_log"} <= set(paper_sd)
    assert "predict_action.0.weight" in paper_sd and "model.ln_f.bias" in paper_sd
    ours, config = from_paper(paper_sd)
    assert ours.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        if preset == "v1" and mixer.endswith("line") and ".mixer" in k:
            continue  # their line weights arrive combined (rows outside each slice are unused)
        assert torch.equal(ours[k], v), k
    for k in ("state_dim", "act_dim", "d_model", "n_layers", "mixer", "preset", "window", "d_state"):
        assert config[k] == model.config[k], k
    loaded = load_paper_checkpoint(paper_sd, context_len=4, dropout=0.0).eval()
    assert loaded.embed_ln.weight.dtype == torch.float64
    ep = episode(T=4)
    torch.testing.assert_close(loaded(**ep), model(**ep), rtol=1e-12, atol=1e-13)
