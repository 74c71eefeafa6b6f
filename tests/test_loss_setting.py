"""The loss's one default setting and its schedule, in every entry point (core, PyTorch, Keras, Lightning,
nnU-Net, the reference trainers)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit import LOSS_SETTINGS, LossSetting, WeightSchedule, get_loss_setting, uncertainty_weight

DEFAULT = LOSS_SETTINGS["default"]


def reference_weight(weight: float, warmup: float, ramp: float, progress: float) -> float:
    """The schedule read off its description: nothing during the warm-up, a straight line, then flat."""
    progress = min(1.0, max(0.0, progress))
    if progress < warmup:
        return 0.0
    if ramp == 0 or progress >= warmup + ramp:
        return weight
    return weight * (progress - warmup) / ramp


# --- the setting and the schedule ---------------------------------------------------------------------------


@given(
    weight=st.floats(0, 1e4),
    warmup=st.floats(0, 1),
    ramp=st.floats(0, 2),
    progress=st.floats(-0.5, 1.5),
)
def test_weight_at_follows_the_description(weight, warmup, ramp, progress):
    setting = LossSetting(weight=weight, push="binary", warmup=warmup, ramp=ramp)
    got = setting.weight_at(progress)
    assert got == pytest.approx(reference_weight(weight, warmup, ramp, progress), rel=1e-12, abs=1e-12)
    assert 0.0 <= got <= weight


@given(total=st.integers(1, 200), data=st.data())
def test_schedule_counts_steps_and_matches_the_functional_form(total, data):
    steps = data.draw(st.integers(0, total + 3))
    schedule = WeightSchedule(DEFAULT, total_steps=total)
    seen = []
    for _ in range(steps):
        seen.append(schedule.weight)
        schedule.advance()
    expected = [
        reference_weight(DEFAULT.weight, DEFAULT.warmup, DEFAULT.ramp, i / total) for i in range(steps)
    ]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert [uncertainty_weight(i, total) for i in range(steps)] == seen
    assert seen == sorted(seen)  # the weight never goes down


def test_a_schedule_without_a_length_refuses_unless_the_weight_is_constant():
    with pytest.raises(ValueError, match=r"does not know the length of training.*`total_steps`"):
        WeightSchedule(DEFAULT).weight
    assert WeightSchedule(LOSS_SETTINGS["authors"]).weight == 2000.0
    assert WeightSchedule(DEFAULT.replace(warmup=0.0, ramp=0.0)).weight == DEFAULT.weight


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"weight": -1.0}, "`weight` must be a finite number >= 0"),
        ({"weight": float("nan")}, "`weight` must be a finite number >= 0"),
        ({"weight": True}, "`weight` must be a finite number >= 0"),
        ({"warmup": 1.5}, "`warmup` must be a share of training in"),
        ({"warmup": "0.2"}, "`warmup` must be a share of training in"),
        ({"ramp": -0.1}, "`ramp` must be a finite share of training >= 0"),
        ({"ramp": float("inf")}, "`ramp` must be a finite share of training >= 0"),
        ({"push": "label"}, "`push` must be one of"),
    ],
)
def test_bad_settings_are_refused_with_the_argument_named(changes, match):
    with pytest.raises(ValueError, match=match):
        DEFAULT.replace(**changes)


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="`total_steps` must be a whole number >= 1"):
        WeightSchedule(DEFAULT, total_steps=0)
    with pytest.raises(ValueError, match="`total_steps` must be a whole number >= 1"):
        WeightSchedule(DEFAULT, total_steps=10.0)
    with pytest.raises(ValueError, match="`step` must be a whole number >= 0"):
        WeightSchedule(DEFAULT, total_steps=10).set_step(-1)
    with pytest.raises(ValueError, match="`setting` must be one of"):
        get_loss_setting("paper")
    with pytest.raises(TypeError, match="unknown setting field"):
        get_loss_setting("default", margin=0.2)
    with pytest.raises(TypeError, match="`setting` must be a LossSetting"):
        WeightSchedule("default")


# --- one default everywhere ---------------------------------------------------------------------------------


def test_every_entry_point_uses_the_one_default_setting():
    """Each entry point, built with no arguments, carries the setting of LOSS_SETTINGS["default"]."""
    torch_adapter = pytest.importorskip("selectivekit.adapters.torch")
    keras_adapter = pytest.importorskip("selectivekit.adapters.keras")
    from reference_models.config import RunConfig

    assert torch_adapter.UncertaintyAwareLoss().setting is DEFAULT
    assert keras_adapter.UncertaintyAwareLoss().setting is DEFAULT
    # the margin losses and the array-API form push as the default setting does
    assert sk.MarginLossOptions().push == DEFAULT.push
    assert torch_adapter.UncertaintyMarginLoss().options.push == DEFAULT.push
    assert keras_adapter.UncertaintyMarginLoss().options.push == DEFAULT.push
    for function in (sk.margin_loss_from_logits, sk.uncertainty_margin_loss):
        assert inspect.signature(function).parameters["push"].default == DEFAULT.push
    # the reference trainers, on every dataset
    for dataset in ("synthetic-glas", "synthetic-mmwhs"):
        assert RunConfig(dataset=dataset).resolved().uncertainty_setting() == DEFAULT
    assert RunConfig(loss_setting="authors").resolved().uncertainty_setting() == LOSS_SETTINGS["authors"]


def test_the_nnunet_trainer_reads_the_default_setting():
    pytest.importorskip("nnunetv2")
    from selectivekit.adapters import nnunet

    trainer_cls = nnunet.nnUNetTrainerUncertaintyAware
    trainer = trainer_cls.__new__(trainer_cls)  # nnU-Net's __init__ needs plans and a dataset
    assert trainer.loss_setting == DEFAULT
    trainer.num_epochs = 8
    assert [trainer.loss_setting.weight_at(e / 8) for e in range(8)] == [
        DEFAULT.weight_at(e / 8) for e in range(8)
    ]
    assert [trainer.uncertainty_factor(e) * DEFAULT.weight for e in range(8)] == pytest.approx(
        [reference_weight(DEFAULT.weight, DEFAULT.warmup, DEFAULT.ramp, e / 8) for e in range(8)]
    )


# --- PyTorch ------------------------------------------------------------------------------------------------


def _batch(seed=0, k=4):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 5, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, k, (2, 5, 5), generator=g)
    return logits, labels


def test_torch_loss_follows_its_schedule_step_by_step():
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss, UncertaintyMarginLoss

    total = 10
    criterion = UncertaintyAwareLoss(total_steps=total)
    logits, labels = _batch()
    ce = torch.nn.functional.cross_entropy(logits, labels).detach()
    unc = UncertaintyMarginLoss(push=DEFAULT.push)(logits, labels).detach()
    for step in range(total + 2):
        value = criterion(logits, labels).detach()
        want = reference_weight(DEFAULT.weight, DEFAULT.warmup, DEFAULT.ramp, step / total)
        assert criterion.last_weight == pytest.approx(want, abs=1e-12)
        assert float(value) == pytest.approx(float(ce + want * unc), rel=1e-12)
        with torch.no_grad():  # evaluation: the current weight, no step counted
            criterion(logits.detach(), labels)
        assert criterion.schedule.step == step + 1


def test_torch_loss_without_a_length_refuses_to_train():
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    logits, labels = _batch()
    with pytest.raises(ValueError, match="does not know the length of training"):
        UncertaintyAwareLoss()(logits, labels)
    with pytest.raises(AttributeError, match="`weight` follows the schedule"):
        UncertaintyAwareLoss().weight = 5.0
    # a constant weight needs no length; the paper's setting is one argument away
    authors = UncertaintyAwareLoss(setting="authors")
    value = authors(logits, labels).detach()
    ce = torch.nn.functional.cross_entropy(logits, labels).detach()
    assert float(value) == pytest.approx(float(ce + 2000.0 * authors.last_unc_loss), rel=1e-12)
    assert authors.unc_loss.options.push == "uniform"


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "int64", "float32"])
def test_torch_aware_loss_accepts_every_integer_target_dtype(dtype):
    """The default cross-entropy needs int64: every integer dtype (and whole-number floats) is widened."""
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    logits, labels = _batch(4)
    want = UncertaintyAwareLoss(setting="authors")(logits, labels).detach()
    got = UncertaintyAwareLoss(setting="authors")(logits, labels.to(getattr(torch, dtype))).detach()
    assert float(got) == float(want)


def test_torch_loss_deep_supervision_counts_one_step_per_call():
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    logits, labels = _batch()
    small = torch.nn.functional.avg_pool2d(logits, 2)
    criterion = UncertaintyAwareLoss(total_steps=4)
    criterion([logits, small], labels)
    assert criterion.schedule.step == 1


def test_torch_loss_refuses_a_margin_loss_with_another_push():
    pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss, UncertaintyMarginLoss

    with pytest.raises(ValueError, match="give `push` in one place"):
        UncertaintyAwareLoss(setting="authors", margin_loss=UncertaintyMarginLoss())
    loss = UncertaintyAwareLoss(setting="authors", margin_loss=UncertaintyMarginLoss(push="uniform"))
    assert loss.setting is LOSS_SETTINGS["authors"]


@pytest.mark.parametrize("push", ["binary", "uniform"])
def test_array_api_push_equals_the_torch_kernel(push):
    """margin_loss_from_logits on torch tensors: the value and the gradient of the PyTorch class."""
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    for seed in range(5):
        logits, labels = _batch(seed, k=5)
        labels[0, 0, 0] = -100
        expected = UncertaintyMarginLoss(push=push)(logits, labels)
        (expected_grad,) = torch.autograd.grad(expected, logits)
        leaf = logits.detach().clone().requires_grad_(True)
        got = sk.margin_loss_from_logits(leaf, labels, axis=1, ignore_index=-100, push=push)
        (grad,) = torch.autograd.grad(got, leaf)
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_array_api_binary_push_under_jax_grad_equals_torch():
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    logits, labels = _batch(3, k=5)
    expected = UncertaintyMarginLoss(push="binary")(logits.double(), labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    z = jax.numpy.asarray(logits.detach().double().numpy())
    y = jax.numpy.asarray(labels.numpy())
    grad = jax.grad(lambda a: sk.margin_loss_from_logits(a, y, axis=1, push="binary"))(z)
    uniform = jax.grad(lambda a: sk.margin_loss_from_logits(a, y, axis=1, push="uniform"))(z)
    np.testing.assert_allclose(np.asarray(grad), expected_grad.numpy(), rtol=1e-6, atol=1e-9)
    assert not np.allclose(np.asarray(grad), np.asarray(uniform))  # the push changes the direction


def test_numpy_binary_push_keeps_the_value():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, 50)
    binary = sk.margin_loss_from_logits(logits, labels, axis=-1, push="binary")
    uniform = sk.margin_loss_from_logits(logits, labels, axis=-1, push="uniform")
    assert float(binary) == float(uniform)


# --- Lightning ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_callback_drives_the_schedule_from_the_trainer():
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from selectivekit.adapters.lightning import UncertaintyScheduleCallback
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    torch.manual_seed(0)
    images = torch.randn(12, 1, 6, 6)
    labels = torch.randint(0, 3, (12, 6, 6))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=2)
    criterion = UncertaintyAwareLoss()
    used = []

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = criterion(self.conv(x), y)
            used.append(criterion.last_weight)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = pl.Trainer(
        max_epochs=2, accumulate_grad_batches=2, callbacks=[UncertaintyScheduleCallback(criterion)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(Net(), loader)
    total = 6  # 2 epochs x 6 batches / 2 accumulated
    assert criterion.schedule.total_steps == total
    # one optimizer step every two batches: the weight follows optimizer steps, not calls of the loss
    want = [
        reference_weight(DEFAULT.weight, DEFAULT.warmup, DEFAULT.ramp, (i // 2) / total) for i in range(12)
    ]
    assert used == pytest.approx(want)


def test_lightning_callback_refuses_another_loss():
    pytest.importorskip("lightning.pytorch")
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.lightning import UncertaintyScheduleCallback

    with pytest.raises(TypeError, match=r"`loss` must be a selectivekit\.adapters\.torch\.Uncertainty"):
        UncertaintyScheduleCallback(torch.nn.CrossEntropyLoss())


# --- Keras --------------------------------------------------------------------------------------------------


def _keras_model(keras):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    return keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs))


def test_keras_callback_sets_the_weight_each_epoch():
    keras = pytest.importorskip("keras")
    from selectivekit.adapters.keras import UncertaintyAwareLoss, UncertaintyScheduleCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, (8, 6, 6))
    loss = UncertaintyAwareLoss()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(loss.weight)

    model = _keras_model(keras)
    model.compile(optimizer="sgd", loss=loss)
    epochs = 6
    model.fit(
        x, y, epochs=epochs, batch_size=4, verbose=0, callbacks=[UncertaintyScheduleCallback(loss), Record()]
    )
    want = [
        reference_weight(DEFAULT.weight, DEFAULT.warmup, DEFAULT.ramp, (e + 0.5) / epochs) for e in range(6)
    ]
    assert seen == pytest.approx(want)
    # the compiled step uses the weight: the loss of a batch at the last weight, recomputed directly
    logits = model.predict(x[:4], verbose=0)
    direct = UncertaintyAwareLoss(weight=want[-1], warmup=0, ramp=0)(y[:4], logits)
    assert float(model.evaluate(x[:4], y[:4], verbose=0, batch_size=4)) == pytest.approx(
        float(direct), rel=1e-5
    )


def test_keras_loss_without_its_callback_refuses_to_train():
    keras = pytest.importorskip("keras")
    from selectivekit.adapters.keras import UncertaintyAwareLoss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, (4, 6, 6))
    model = _keras_model(keras)
    model.compile(optimizer="sgd", loss=UncertaintyAwareLoss())
    with pytest.raises(ValueError, match="does not know the length of training"):
        model.fit(x, y, epochs=1, verbose=0)


def test_keras_configs_round_trip_and_old_configs_keep_their_constant_weight():
    pytest.importorskip("keras")
    from selectivekit.adapters.keras import UncertaintyAwareLoss

    loss = UncertaintyAwareLoss(weight=50.0, ramp=0.5)
    again = UncertaintyAwareLoss.from_config(loss.get_config())
    assert again.setting == loss.setting
    old = loss.get_config()  # as written before settings existed: a flat weight, the margin loss's push
    del old["setting"]
    old["weight"] = 2000.0
    old["margin_loss"]["config"]["push"] = "uniform"
    restored = UncertaintyAwareLoss.from_config(old)
    assert restored.setting == dataclasses.replace(LOSS_SETTINGS["authors"], weight=2000.0)
