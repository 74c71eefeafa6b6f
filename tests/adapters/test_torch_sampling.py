"""Several predictions in PyTorch (MC dropout, test-time augmentation, ensembles), checked against loops
written here that make the same predictions by hand and feed them to the core's accumulator or stack."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from selectivekit import PredictiveAccumulator, predictive_uncertainty  # noqa: E402
from selectivekit.adapters.torch_sampling import (  # noqa: E402
    DROPOUT_LAYERS,
    ensemble_uncertainty,
    mc_dropout_uncertainty,
    tta_uncertainty,
)

FIELDS = ("mean", "total", "aleatoric", "epistemic", "variance", "disagreement")


def assert_same(result, reference, **tolerance):
    assert result.samples == reference.samples
    for field in FIELDS:
        torch.testing.assert_close(getattr(result, field), getattr(reference, field), **tolerance)


def flags(model):
    return [m.training for m in model.modules()]


def dropout_model(dims=2, p=0.5):
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    drop = nn.Dropout2d if dims == 2 else nn.Dropout3d
    torch.manual_seed(0)
    model = nn.Sequential(conv(1, 4, 3, padding=1), norm(4), nn.ReLU(), drop(p), conv(4, 3, 1))
    with torch.no_grad():  # running statistics far from a batch's, so that using them shows
        model[1].running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        model[1].running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
    return model


def inputs(*spatial, channels=1, seed=1):
    return torch.randn(2, channels, *spatial, generator=torch.Generator().manual_seed(seed))


# --- MC dropout -------------------------------------------------------------------------------------------


def mc_dropout_by_hand(model, x, n_samples, seed):
    """The S passes written out: every module in eval mode, the dropout layers in train mode, seeded."""
    accumulator = PredictiveAccumulator(axis=1)
    saved = flags(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model.eval()
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d | nn.Dropout3d):
                module.train()
        for _ in range(n_samples):
            accumulator.update(torch.softmax(model(x), dim=1))
    for module, flag in zip(model.modules(), saved, strict=True):
        module.training = flag
    return accumulator.result()


@pytest.mark.parametrize(("dims", "spatial"), [(2, (8, 8)), (3, (8, 8, 8))])
def test_mc_dropout_equals_the_passes_by_hand(dims, spatial):
    model, x = dropout_model(dims), inputs(*spatial)
    result = mc_dropout_uncertainty(model, x, n_samples=5, seed=7)
    assert_same(result, mc_dropout_by_hand(model, x, 5, seed=7), rtol=0, atol=0)
    assert result.mean.shape == (2, 3, *spatial) and result.epistemic.shape == (2, *spatial)
    assert not result.mean.requires_grad


def test_mc_dropout_batch_norm_uses_its_running_statistics_and_keeps_them():
    model, x = dropout_model(), inputs(8, 8)
    model.train()
    norm = model[1]
    before = {name: value.clone() for name, value in norm.state_dict().items()}
    seen = []

    def record(module, args, output):
        seen.append((module.training, args[0].clone(), output.clone()))

    handle = norm.register_forward_hook(record)
    mc_dropout_uncertainty(model, x, n_samples=3, seed=0)
    handle.remove()
    assert len(seen) == 3
    for training, norm_input, output in seen:
        assert not training
        shape = (1, -1, 1, 1)
        expected = (norm_input - before["running_mean"].reshape(shape)) / torch.sqrt(
            before["running_var"].reshape(shape) + norm.eps
        ) * before["weight"].reshape(shape) + before["bias"].reshape(shape)
        torch.testing.assert_close(output, expected)
    for name, value in norm.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_mc_dropout_switches_the_dropout_layers_on():
    model, x = dropout_model(), inputs(8, 8)
    model.eval()
    modes = []
    model[3].register_forward_hook(lambda module, args, output: modes.append(module.training))
    result = mc_dropout_uncertainty(model, x, n_samples=4, seed=0)
    assert modes == [True] * 4
    assert float(result.epistemic.max()) > 1e-3 and float(result.variance.max()) > 1e-3  # samples differ
    assert flags(model) == [False] * len(flags(model))


@pytest.mark.parametrize("train", [True, False, "mixed"])
def test_mc_dropout_restores_every_flag(train):
    model, x = dropout_model(), inputs(8, 8)
    model.train(train is True)
    if train == "mixed":
        model[1].train()
        model[3].eval()
    before = flags(model)
    mc_dropout_uncertainty(model, x, n_samples=2)
    assert flags(model) == before


def test_mc_dropout_restores_flags_and_random_state_when_the_predictor_raises():
    model, x = dropout_model(), inputs(8, 8)
    model.train()
    model[1].eval()
    before, state = flags(model), torch.get_rng_state()
    calls = []

    def failing(inputs, model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory, say")
        return model(inputs)

    with pytest.raises(RuntimeError, match="out of memory"):
        mc_dropout_uncertainty(model, x, n_samples=3, seed=1, predictor=failing)
    assert flags(model) == before
    assert torch.equal(torch.get_rng_state(), state)


def test_mc_dropout_seed_is_reproducible_and_leaves_the_global_state_alone():
    model, x = dropout_model(), inputs(8, 8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = mc_dropout_uncertainty(model, x, n_samples=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same(mc_dropout_uncertainty(model, x, n_samples=4, seed=3), first, rtol=0, atol=0)
    other = mc_dropout_uncertainty(model, x, n_samples=4, seed=4)
    assert not torch.equal(other.mean, first.mean)
    assert torch.equal(torch.get_rng_state(), state)


def test_mc_dropout_without_a_seed_draws_from_the_global_generator():
    model, x = dropout_model(), inputs(8, 8)
    torch.manual_seed(3)
    unseeded = mc_dropout_uncertainty(model, x, n_samples=3, seed=None)
    assert_same(unseeded, mc_dropout_uncertainty(model, x, n_samples=3, seed=3), rtol=0, atol=0)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    mc_dropout_uncertainty(model, x, n_samples=1, seed=None)
    assert not torch.equal(torch.get_rng_state(), state)  # it advanced


def test_mc_dropout_every_torch_dropout_layer_and_your_own():
    for layer in DROPOUT_LAYERS:
        dims = {nn.Dropout1d: 1, nn.Dropout3d: 3}.get(layer, 2)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        model = nn.Sequential(layer(0.5), conv(4, 2, 1))
        result = mc_dropout_uncertainty(model, inputs(*(8,) * dims, channels=4), n_samples=3)
        assert float(result.epistemic.max()) > 0, layer.__name__

    class FunctionalDropout(nn.Module):  # follows its own flag, as in many research models
        def forward(self, x):
            return nn.functional.dropout(x, 0.5, training=self.training)

    model, x = nn.Sequential(FunctionalDropout(), nn.Conv2d(4, 2, 1)), inputs(8, 8, channels=4)
    with pytest.raises(ValueError, match=r"`model` has no dropout layer"):
        mc_dropout_uncertainty(model, x, n_samples=3)
    result = mc_dropout_uncertainty(
        model, x, n_samples=3, dropout_layers=(*DROPOUT_LAYERS, FunctionalDropout)
    )
    assert float(result.epistemic.max()) > 0


def test_mc_dropout_refusals():
    model, x = dropout_model(), inputs(8, 8)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=r"`n_samples` must be >= 1"):
            mc_dropout_uncertainty(model, x, n_samples=bad)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match=r"`n_samples` must be an integer"):
            mc_dropout_uncertainty(model, x, n_samples=bad)
    with pytest.raises(ValueError, match=r"`model` has no dropout layer with p > 0.*4 identical"):
        mc_dropout_uncertainty(nn.Conv2d(1, 2, 1), x, n_samples=4)
    with pytest.raises(ValueError, match=r"`model` has no dropout layer"):
        mc_dropout_uncertainty(dropout_model(p=0.0), x, n_samples=4)
    with pytest.raises(ValueError, match=r"`seed` must be None or an integer >= 0, got -1"):
        mc_dropout_uncertainty(model, x, n_samples=2, seed=-1)
    with pytest.raises(TypeError, match=r"`seed` must be None or an integer"):
        mc_dropout_uncertainty(model, x, n_samples=2, seed=torch.Generator())
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module"):
        mc_dropout_uncertainty(lambda x: x, x, n_samples=2)
    with pytest.raises(TypeError, match=r"`inputs` must be a torch.Tensor"):
        mc_dropout_uncertainty(model, x.numpy(), n_samples=2)
    with pytest.raises(TypeError, match=r"`dropout_layers` must be a tuple of module classes"):
        mc_dropout_uncertainty(model, x, n_samples=2, dropout_layers=[nn.Dropout])
    with pytest.raises(TypeError, match=r"`predictor` must be callable"):
        mc_dropout_uncertainty(model, x, n_samples=2, predictor="sliding window")


# --- test-time augmentation -------------------------------------------------------------------------------


def flipped_back_by_hand(model, x, axes):
    """Every subset of ``axes`` as a tuple of booleans, flipped, predicted and flipped back."""
    outputs = []
    with torch.no_grad():
        for chosen in itertools.product([False, True], repeat=len(axes)):
            subset = [axis for axis, flip in zip(axes, chosen, strict=True) if flip]
            y = model(x.flip(subset) if subset else x)
            outputs.append(torch.softmax(y.flip(subset) if subset else y, dim=1))
    return outputs


@pytest.mark.parametrize(("spatial", "count"), [((8, 8), 4), ((8, 8, 8), 8)])
def test_tta_of_a_model_that_commutes_with_flips_is_the_plain_prediction(spatial, count):
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    torch.manual_seed(0)
    model, x = conv(2, 3, 1), inputs(*spatial, channels=2)
    result = tta_uncertainty(model, x)
    assert result.samples == count
    torch.testing.assert_close(result.mean, torch.softmax(model(x), dim=1).detach())
    torch.testing.assert_close(result.epistemic, torch.zeros_like(result.epistemic), rtol=0, atol=1e-6)
    assert torch.equal(result.disagreement, torch.zeros_like(result.disagreement))
    torch.testing.assert_close(result.variance, torch.zeros_like(result.variance), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("spatial", "axes"), [((8, 8), (2, 3)), ((8, 8, 8), (2, 3, 4)), ((8, 8, 8), (4,))])
def test_tta_equals_the_flipped_back_outputs_by_hand(spatial, axes):
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    torch.manual_seed(0)
    model = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 3, 3, padding=1))
    x = inputs(*spatial)
    result = tta_uncertainty(model, x, flip_axes=None if len(axes) > 1 else axes)
    outputs = flipped_back_by_hand(model, x, axes)
    assert result.samples == len(outputs) == 2 ** len(axes)
    torch.testing.assert_close(result.mean, torch.stack(outputs).mean(dim=0))
    assert_same(result, predictive_uncertainty(torch.stack(outputs)), rtol=1e-5, atol=1e-6)
    assert float(result.epistemic.max()) > 1e-4  # the model is not flip-equivariant: the samples differ


def square_symmetries_by_hand(model, x, flips=True):
    """The quarter turns, and (``flips``) the quarter turns after a flip of axis 3: the 8 symmetries of the
    square, each mapped back."""
    outputs = []
    with torch.no_grad():
        for k in range(4):
            outputs.append(torch.softmax(torch.rot90(model(torch.rot90(x, k, (2, 3))), -k, (2, 3)), dim=1))
            if flips:
                y = model(torch.rot90(x.flip(3), k, (2, 3)))
                outputs.append(torch.softmax(torch.rot90(y, -k, (2, 3)).flip(3), dim=1))
    return outputs


@pytest.mark.parametrize("flips", [True, False])
def test_tta_rotations_equal_the_turned_back_outputs_by_hand(flips):
    torch.manual_seed(0)
    model, x = (
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1)),
        inputs(8, 8),
    )
    result = tta_uncertainty(model, x, flip_axes=None if flips else (), rotation_planes=[(2, 3)])
    outputs = square_symmetries_by_hand(model, x, flips)
    assert result.samples == len(outputs) == (8 if flips else 4)
    assert_same(result, predictive_uncertainty(torch.stack(outputs)), rtol=1e-5, atol=1e-6)


def test_tta_rotations_of_a_pointwise_model_agree_and_non_square_planes_work():
    torch.manual_seed(0)
    model, x = nn.Conv3d(1, 3, 1), inputs(8, 6, 4)
    result = tta_uncertainty(model, x, rotation_planes=[(3, 4), (-3, -1), (2, 3)])
    assert result.samples == 48  # every symmetry of the cube, each once
    torch.testing.assert_close(result.mean, torch.softmax(model(x), dim=1).detach())
    assert torch.equal(result.disagreement, torch.zeros_like(result.disagreement))
    result = tta_uncertainty(model, x, rotation_planes=[(3, 4)])
    assert result.samples == 16  # the square's 8 symmetries in (3, 4), with or without a flip of axis 2


def test_tta_runs_in_eval_mode_and_restores_the_flags():
    model, x = dropout_model(), inputs(8, 8)
    model.train()
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    first = tta_uncertainty(model, x)
    assert_same(tta_uncertainty(model, x), first, rtol=0, atol=0)  # no dropout: deterministic
    assert flags(model) == [True] * len(flags(model))
    assert all(torch.equal(v, before[k]) for k, v in model[1].state_dict().items())


def test_tta_refusals():
    model, x = nn.Conv2d(1, 2, 1), inputs(8, 8)
    for bad in (1, 0, 4, -3):
        with pytest.raises(ValueError, match=r"`flip_axes` must name spatial axes of the input \(2 to 3"):
            tta_uncertainty(model, x, flip_axes=(2, bad))
    with pytest.raises(ValueError, match=r"`flip_axes` must not repeat an axis"):
        tta_uncertainty(model, x, flip_axes=(2, -2))
    with pytest.raises(TypeError, match=r"`flip_axes` must hold integers"):
        tta_uncertainty(model, x, flip_axes=(2.0,))
    with pytest.raises(ValueError, match=r"`rotation_planes` must hold pairs of two different axes"):
        tta_uncertainty(model, x, rotation_planes=[(2, -2)])
    with pytest.raises(ValueError, match=r"`rotation_planes` must hold pairs of spatial axes"):
        tta_uncertainty(model, x, rotation_planes=[(2, 3, 3)])
    with pytest.raises(ValueError, match=r"`rotation_planes` must name spatial axes"):
        tta_uncertainty(model, x, rotation_planes=[(1, 3)])
    with pytest.raises(ValueError, match=r"`inputs` must have at least 3 dimensions"):
        tta_uncertainty(nn.Linear(8, 2), torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"`predictor` must return outputs with the input's axes"):
        tta_uncertainty(model, x, predictor=lambda x, m: m(x).flatten(2))


def test_tta_picks_the_given_axes():
    torch.manual_seed(0)
    model, x = nn.Conv2d(1, 2, 3, padding=1), inputs(8, 8)
    assert tta_uncertainty(model, x, flip_axes=-1).samples == 2
    assert tta_uncertainty(model, x, flip_axes=()).samples == 1
    outputs = flipped_back_by_hand(model, x, (3,))
    assert_same(tta_uncertainty(model, x, flip_axes=[3]), predictive_uncertainty(torch.stack(outputs)))


# --- ensembles --------------------------------------------------------------------------------------------


def members(n=4, dims=2):
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    torch.manual_seed(0)
    return [nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 3, 1)) for _ in range(n)]


@pytest.mark.parametrize(("dims", "spatial"), [(2, (8, 8)), (3, (8, 8, 8))])
def test_ensemble_equals_the_stack_of_the_members_outputs(dims, spatial):
    models, x = members(dims=dims), inputs(*spatial)
    with torch.no_grad():
        stack = torch.stack([torch.softmax(m(x), dim=1) for m in models])
    result = ensemble_uncertainty(models, x)
    assert_same(result, predictive_uncertainty(stack), rtol=1e-6, atol=1e-7)
    assert_same(ensemble_uncertainty(nn.ModuleList(models), x), result, rtol=0, atol=0)


def test_ensemble_runs_each_member_in_eval_mode_and_restores_the_flags():
    models = [dropout_model(), dropout_model()]
    x = inputs(8, 8)
    for m in models:
        m.train()
    with torch.no_grad():
        for m in models:
            m.eval()
        stack = torch.stack([torch.softmax(m(x), dim=1) for m in models])
        for m in models:
            m.train()
    assert_same(ensemble_uncertainty(models, x), predictive_uncertainty(stack), rtol=1e-6, atol=1e-7)
    assert all(flags(m) == [True] * len(flags(m)) for m in models)


def test_activations():
    torch.manual_seed(0)
    models, x = [nn.Conv2d(1, 1, 3, padding=1) for _ in range(3)], inputs(8, 8)
    with torch.no_grad():
        logits = [m(x) for m in models]
    stack = torch.stack([torch.cat([1 - torch.sigmoid(y), torch.sigmoid(y)], dim=1) for y in logits])
    result = ensemble_uncertainty(models, x, activation="sigmoid")
    assert_same(result, predictive_uncertainty(stack), rtol=1e-5, atol=1e-6)
    softmax_models = members(3)
    plain = ensemble_uncertainty(softmax_models, x)
    probabilities = ensemble_uncertainty(
        softmax_models, x, activation="none", predictor=lambda x, m: torch.softmax(m(x), dim=1)
    )
    assert_same(probabilities, plain, rtol=0, atol=0)
    half = ensemble_uncertainty(softmax_models, x, predictor=lambda x, m: m(x).to(torch.bfloat16))
    assert half.mean.dtype == torch.float32
    with pytest.raises(ValueError, match=r'`activation="sigmoid"` needs one output channel.*got 3'):
        ensemble_uncertainty(softmax_models, x, activation="sigmoid")
    with pytest.raises(ValueError, match=r"`activation` must be one of"):
        ensemble_uncertainty(softmax_models, x, activation="relu")


def test_ensemble_refusals():
    models, x = members(2), inputs(8, 8)
    with pytest.raises(ValueError, match=r"`models` is empty"):
        ensemble_uncertainty([], x)
    with pytest.raises(TypeError, match=r"`models` must be a sequence of modules.*one Sequential"):
        ensemble_uncertainty(models[0], x)
    with pytest.raises(TypeError, match=r"`models\[1\]` must be a torch.nn.Module, got function"):
        ensemble_uncertainty([models[0], lambda x: x], x)
    with pytest.raises(TypeError, match=r"`models` must be a sequence of torch.nn.Module"):
        ensemble_uncertainty(3, x)
    torch.manual_seed(0)
    wider = nn.Conv2d(1, 4, 1)
    with pytest.raises(ValueError, match=r"`models\[2\]` gives probabilities of shape \(2, 4, 8, 8\), but "):
        ensemble_uncertainty([*models, wider], x)
    with pytest.raises(TypeError, match=r"`predictor` must return a tensor.*got tuple"):
        ensemble_uncertainty(models, x, predictor=lambda x, m: (m(x), m(x)))
    with pytest.raises(ValueError, match=r"`predictor` must return floating-point outputs"):
        ensemble_uncertainty(models, x, predictor=lambda x, m: m(x).argmax(1, keepdim=True))


# --- sliding-window inference as the predictor ------------------------------------------------------------


def test_monai_sliding_window_inference_as_the_predictor():
    inferers = pytest.importorskip("monai.inferers")
    x = inputs(8, 8)

    def window(inputs, model):
        return inferers.sliding_window_inference(inputs, (8, 8), 1, model)

    inferer = inferers.SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=1)
    model, models = dropout_model(), members(3)
    for predictor in (window, inferer):
        assert_same(
            mc_dropout_uncertainty(model, x, n_samples=3, predictor=predictor),
            mc_dropout_uncertainty(model, x, n_samples=3),
        )
        assert_same(tta_uncertainty(model, x, predictor=predictor), tta_uncertainty(model, x))
        assert_same(ensemble_uncertainty(models, x, predictor=predictor), ensemble_uncertainty(models, x))
    # several windows: runs, and gives maps of the input's size
    big = inputs(12, 16)
    result = tta_uncertainty(model, big, predictor=inferers.SlidingWindowInferer((8, 8), 2, overlap=0.5))
    assert result.samples == 4 and result.total.shape == (2, 12, 16)


# --- CUDA (runs only where a CUDA device is available) ----------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_maps_stay_there_and_every_random_state_is_kept():
    device = torch.device("cuda")
    model, x = dropout_model().to(device), inputs(8, 8).to(device)
    cpu_state, cuda_states = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    result = mc_dropout_uncertainty(model, x, n_samples=3, seed=2)
    assert result.mean.device.type == "cuda" and result.epistemic.device.type == "cuda"
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_states, strict=True))
    assert_same(mc_dropout_uncertainty(model, x, n_samples=3, seed=2), result)
    assert_same(result, mc_dropout_by_hand(model, x, 3, seed=2))
    cpu_model, cpu_x = dropout_model(), inputs(8, 8)
    tta = tta_uncertainty(model, x, rotation_planes=[(2, 3)])
    assert_same(
        tta,
        tta_uncertainty(cpu_model, cpu_x, rotation_planes=[(2, 3)]),
        rtol=1e-4,
        atol=1e-5,
        check_device=False,
    )
    models = members(3)
    assert_same(
        ensemble_uncertainty([m.to(device) for m in members(3)], x),
        ensemble_uncertainty(models, cpu_x),
        rtol=1e-4,
        atol=1e-5,
        check_device=False,
    )
