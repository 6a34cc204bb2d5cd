"""Regularizers and the training loop: the math they cite, cancellation, resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compressors.errors import JobCancelled, NotRetrainable, TrainingDiverged
from compressors.intake.loading import load_model
from compressors.onnx import metrics
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.layers import find_layers
from compressors.training.convert import to_torch, write_back
from compressors.training.loop import TrainConfig, distillation_loss, learning_rate, train
from compressors.training.prepare import check_retrainable, prepare
from compressors.training.prox import NuclearProx, singular_value_threshold
from compressors.training.variational import kl_approximation
from compressors.training.views import weight_views
from tests import builders


def test_prox_matches_closed_form_svt() -> None:
    rng = np.random.default_rng(0)
    for shape in [(6, 9), (9, 6), (5, 5)]:
        w = rng.standard_normal(shape)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        tau = float(np.median(s))
        expected = u @ np.diag(np.maximum(s - tau, 0)) @ vt
        got = singular_value_threshold(torch.from_numpy(w)[None], tau)[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-9)
        assert np.linalg.matrix_rank(got, tol=1e-8) == int((s > tau).sum())


def test_prox_on_a_batch_of_float32_matrices_matches_exact_svt() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 32, 48)).astype(np.float32)
    got = singular_value_threshold(torch.from_numpy(w), 1.5).numpy()
    for i in range(4):
        u, s, vt = np.linalg.svd(w[i].astype(np.float64), full_matrices=False)
        expected = u @ np.diag(np.maximum(s - 1.5, 0)) @ vt
        assert np.abs(got[i] - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize("log_alpha", [-8.0, -2.0, 0.0, 1.5, 3.0, 8.0])
def test_variational_kl_is_the_papers_approximation(log_alpha: float) -> None:
    # Molchanov et al. 2017, Eq. 14: −KL ≈ k1·σ(k2 + k3·log α) − 0.5·log(1 + 1/α) + C, C = −k1,
    # with the paper's constants written out here, not read from the implementation
    K1, K2, K3 = 0.63576, 1.87320, 1.48695
    alpha = np.exp(log_alpha)
    neg_kl = K1 / (1 + np.exp(-(K2 + K3 * log_alpha))) - 0.5 * np.log1p(1 / alpha) - K1
    got = float(kl_approximation(torch.tensor(log_alpha, dtype=torch.float64)))
    assert got == pytest.approx(-neg_kl, rel=1e-9, abs=1e-12)


def test_variational_kl_vanishes_as_alpha_grows_and_is_monotone() -> None:
    grid = torch.linspace(-6, 12, 50, dtype=torch.float64)
    kl = kl_approximation(grid)
    assert (kl[1:] <= kl[:-1] + 1e-12).all()
    assert float(kl[-1]) < 1e-4 and float(kl_approximation(torch.tensor(-10.0))) > 2.0


def test_distillation_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(8, 10)
    assert float(distillation_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, logits.flip(1), 4.0)) > 0.0


def _mlp_module(tmp_path: Path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = builders.gemm(16, 4, trans_b=1)
    path = builders.save(model, tmp_path / "g.onnx")
    loaded = load_model(path, tmp_path / "w")
    return loaded, to_torch(loaded.proto)


def _data(n: int = 96):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    return x, (x[:, :4].argmax(1)).astype(np.int64)


def test_cancellation_stops_within_one_batch(tmp_path: Path) -> None:
    _, trainable = _mlp_module(tmp_path)
    x, y = _data()
    seen: list[int] = []
    with pytest.raises(JobCancelled):
        train(
            trainable.module,
            x,
            y,
            TrainConfig(epochs=3, batch_size=8),
            progress=lambda p: seen.append(p.step),
            should_stop=lambda: len(seen) >= 5,
        )
    assert len(seen) == 5  # the check before the 6th batch stopped it


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    x, y = _data()
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, seed=7)

    def fresh():
        loaded, trainable = _mlp_module(tmp_path / str(len(list(tmp_path.iterdir()))))
        shapes, batch = analysis_shapes(loaded.proto)
        views = weight_views(trainable, loaded.proto, find_layers(loaded.proto, shapes, batch))
        prox = NuclearProx(trainable.module, views, strength=0.5, prox_every=3, ramp=0.5, total_steps=24)
        return trainable, prox

    assert config.lr_schedule == "cosine"  # the default: the step size changes every step
    whole, reg = fresh()
    train(whole.module, x, y, config, regularizer=reg)

    interrupted, reg2 = fresh()
    checkpoint = tmp_path / "ckpt.pt"
    epochs_done: list[int] = []
    with pytest.raises(JobCancelled):
        train(
            interrupted.module,
            x,
            y,
            config,
            regularizer=reg2,
            checkpoint=checkpoint,
            progress=lambda p: epochs_done.append(p.epoch) if p.step == p.steps else None,
            should_stop=lambda: len(epochs_done) >= 4,
        )  # stop after epoch 2 (two callbacks/epoch)
    resumed, reg3 = fresh()
    result = train(resumed.module, x, y, config, regularizer=reg3, checkpoint=checkpoint)
    assert result.resumed_from_epoch == 2
    for (name, a), (_, b) in zip(
        whole.module.named_parameters(), resumed.module.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_ramped_strength_thresholds_by_the_sum_of_the_steps_it_stands_for(tmp_path: Path) -> None:
    loaded, trainable = _mlp_module(tmp_path)
    shapes, batch = analysis_shapes(loaded.proto)
    views = weight_views(trainable, loaded.proto, find_layers(loaded.proto, shapes, batch))
    prox = NuclearProx(trainable.module, views, strength=2.0, prox_every=4, ramp=0.5, total_steps=16)
    assert [prox.strength_at(s) for s in (1, 4, 8, 9, 16)] == [0.25, 1.0, 2.0, 2.0, 2.0]
    taus: list[float] = []
    prox.prox = taus.append  # type: ignore[method-assign]
    for step in range(1, 17):
        prox.after_step(step, 0.1)
    # λ(s) = 2·min(1, s/8); each prox covers 4 steps: lr·Σλ over them
    expected = [0.1 * sum(2.0 * min(1.0, s / 8) for s in range(a, a + 4)) for a in (1, 5, 9, 13)]
    assert taus == pytest.approx(expected)
    with pytest.raises(ValueError, match="ramp"):
        NuclearProx(trainable.module, views, strength=1.0, ramp=1.5, total_steps=16)


def test_stats_reuse_the_spectrum_the_last_prox_left(tmp_path: Path) -> None:
    loaded, trainable = _mlp_module(tmp_path)
    shapes, batch = analysis_shapes(loaded.proto)
    views = weight_views(trainable, loaded.proto, find_layers(loaded.proto, shapes, batch))
    prox = NuclearProx(trainable.module, views, strength=1.0, prox_every=1)
    before = prox.stats()  # no prox yet: computed from the weights
    prox.prox(0.3)
    cached = prox.stats()
    prox._spectra = None
    fresh = prox.stats()  # recomputed from the thresholded weights
    assert cached["nuclear_norm"] == pytest.approx(fresh["nuclear_norm"], rel=1e-6)
    assert cached["rank90_ratio"] == pytest.approx(fresh["rank90_ratio"])
    assert cached["nuclear_norm"] < before["nuclear_norm"]


def test_cosine_schedule_decays_the_step_size_to_zero() -> None:
    config = TrainConfig(lr=0.1, lr_schedule="cosine")
    rates = [learning_rate(config, s, 10) for s in range(1, 11)]
    assert rates[0] == pytest.approx(0.1) and 0 < rates[-1] < 0.01
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert learning_rate(TrainConfig(lr=0.1, lr_schedule="constant"), 7, 10) == 0.1
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(TrainConfig(lr_schedule="step"), 1, 10)


def test_write_back_puts_trained_weights_into_the_users_graph(tmp_path: Path) -> None:
    loaded, trainable = _mlp_module(tmp_path)
    x, y = _data()
    train(trainable.module, x, y, TrainConfig(epochs=2, batch_size=16, lr=1e-2))
    updated = write_back(trainable, loaded.proto)
    assert [n.op_type for n in updated.graph.node] == [n.op_type for n in loaded.proto.graph.node]
    with torch.no_grad():
        expected = trainable.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(metrics.predict(updated, x), expected, atol=1e-5)


def _reshape_model(target: np.ndarray | None) -> onnx.ModelProto:
    """Reshape(allowzero=1) to a constant target, or (None) to one computed from the input."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["X", "shape"], ["Y"], allowzero=1)]
    inits = []
    if target is None:  # [batch, -1] built at run time, the way unoptimized exports write it
        nodes[:0] = [
            helper.make_node("Shape", ["X"], ["dims"], end=1),
            helper.make_node("Constant", [], ["rest"], value_ints=[-1]),
            helper.make_node("Concat", ["dims", "rest"], ["shape"], axis=0),
        ]
    else:
        inits.append(numpy_helper.from_array(target.astype(np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "g", [builders.value("X", ["batch", 2, 4])], [builders.value("Y", ["batch", 8])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _allowzero(model: onnx.ModelProto) -> int:
    (reshape,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    return next(a.i for a in reshape.attribute if a.name == "allowzero")


@pytest.mark.parametrize("target", [np.array([-1, 8]), None], ids=["constant", "computed"])
def test_reshape_allowzero_is_relaxed_for_training(target: np.ndarray | None) -> None:
    model = _reshape_model(target)
    prepared = prepare(model)
    assert prepared.opset_import[0].version == 18  # converted at its own opset, not brought down
    assert _allowzero(prepared) == 0 and _allowzero(model) == 1  # the user's graph keeps its own
    assert check_retrainable(model) == (True, "")
    trainable = to_torch(model)
    x = np.arange(3 * 8, dtype=np.float32).reshape(3, 2, 4)
    with torch.no_grad():
        got = trainable.module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, metrics.predict(model, x))


def test_a_reshape_that_always_empties_its_input_is_not_relaxed() -> None:
    model = _reshape_model(np.array([0, 8]))
    assert _allowzero(prepare(model)) == 1
    ok, why = check_retrainable(model)
    assert not ok and "allowzero" in why


def test_an_operator_without_a_converter_is_named() -> None:
    from onnx import helper

    node = helper.make_node("Det", ["X"], ["Y"])
    graph = helper.make_graph([node], "g", [builders.value("X", [3, 3])], [builders.value("Y", [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ok, why = check_retrainable(model)
    assert not ok and "Det" in why
    with pytest.raises(NotRetrainable, match="Det"):
        to_torch(model)


def test_a_loss_that_stops_being_finite_raises_training_diverged() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = np.arange(64) % 3
    config = TrainConfig(epochs=3, batch_size=16, lr=1e30, lr_schedule="constant")
    with pytest.raises(TrainingDiverged, match=r"^training diverged: .* at epoch 1, step \d+; lower lr"):
        train(module, x, y, config)
    weights = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"weights 0\.weight went non-finite"):
        train(module, x, y, weights)
