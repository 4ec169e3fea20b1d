import pytest
import torch
from torch import nn

from era_core.entropy import categorical_entropy
from era_vision.calibration import (
    TEMPERATURE_RANGE,
    evaluate_heads,
    fit_temperature,
    head_logits,
)
from era_vision.data import TensorImages, split_holdout, stratified_split
from era_vision.distributed import Dist
from era_vision.era import with_era
from era_vision.metrics import ClassificationMetrics

CPU = Dist(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(20_000, 10, generator=generator)
    # Labels drawn from softmax(logits / T): the NLL-optimal temperature is T.
    labels = torch.multinomial((logits / true_t).softmax(-1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_fit_temperature_without_held_out_errors_does_not_fit():
    labels = torch.arange(200) % 10
    # All correct: the NLL falls as T -> 0, which would sharpen every unseen error.
    logits = 4 * torch.nn.functional.one_hot(labels, 10).double()
    with pytest.warns(UserWarning, match=r"skipped \(T = 1\): all 200 held-out") as caught:
        assert fit_temperature(logits, labels) == 1.0
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


def test_fit_temperature_beyond_the_range_stops_at_its_end_and_warns():
    labels = torch.arange(200) % 10
    logits = 4 * torch.nn.functional.one_hot(torch.roll(labels, 1), 10).double()
    # All wrong: the NLL falls as T grows.
    with pytest.warns(UserWarning, match="200 of 200"):
        assert fit_temperature(logits, labels) == TEMPERATURE_RANGE[1]


def test_fit_temperature_keeps_t_1_when_the_fit_raises_the_held_out_nll():
    generator = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(5_000, 10, generator=generator)
    labels = torch.multinomial((logits / 1.2).softmax(-1), 1, generator=generator).squeeze(1)
    nll = lambda t: nn.functional.cross_entropy(logits / t, labels).item()  # noqa: E731
    # One bisection step lands on T = sqrt(20) ~ 4.47, far worse than T = 1 for an optimum
    # near 1.2; more steps reach the optimum, which beats T = 1.
    with pytest.warns(UserWarning, match=r"dropped \(T = 1\): the fitted T = 4.47"):
        assert fit_temperature(logits, labels, iterations=1) == 1.0
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(1.2, rel=0.1) and nll(fitted) < nll(1.0)


def test_fit_temperature_refuses_no_samples():
    with pytest.raises(ValueError, match="held-out"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_stratified_split_is_seeded_disjoint_and_proportional():
    # Class-ordered labels, as ImageFolder lists them: 600 of class 0, 300 of 1, 100 of 2.
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    rest, drawn = stratified_split(labels, 100, seed=3)
    assert len(drawn) == 100 and len(rest) == 900
    assert set(rest.tolist()).isdisjoint(drawn.tolist())
    assert sorted(rest.tolist() + drawn.tolist()) == list(range(1000))
    assert torch.bincount(labels[drawn]).tolist() == [60, 30, 10]
    again = stratified_split(labels, 100, seed=3)[1]
    assert torch.equal(again, drawn)
    assert not torch.equal(stratified_split(labels, 100, seed=4)[1], drawn)
    # Random within a class, not its first samples.
    assert labels[drawn].eq(0).sum() == 60 and drawn[labels[drawn] == 0].max() > 100


def test_split_holdout_never_shares_an_image_with_training():
    data = TensorImages(torch.zeros(200, 1, 2, 2, dtype=torch.uint8), torch.arange(200) % 4)
    train, holdout = split_holdout(data, 0.1, seed=0)
    assert len(holdout) == 20 and len(train) == 180
    assert set(train.indices).isdisjoint(holdout.indices)
    assert torch.bincount(data.labels[holdout.indices]).tolist() == [5, 5, 5, 5]
    assert split_holdout(data, 0.0, seed=0) == (data, None)
    with pytest.raises(ValueError, match="calibration_holdout"):
        split_holdout(data, 0.6, seed=0)


def _dataset(n: int, seed: int, teacher: nn.Module) -> TensorImages:
    """Labels drawn from softmax(2 * teacher logits): the teacher's plain NLL-optimal T is 0.5."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        probs = (2 * teacher(images.float())).softmax(-1)
    return TensorImages(images, torch.multinomial(probs, 1, generator=generator).squeeze(1))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 5)  # where with_era finds the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 64)


def test_evaluate_heads_era_model_has_both_heads_before_and_after_scaling():
    model = with_era(_Net(), min_entropy=0.8)
    test, holdout = _dataset(300, 0, model.model), _dataset(200, 1, model.model)
    evaluation = evaluate_heads(model, test, holdout, CPU, batch_size=64)
    keys = [(r["head"], r["calibrated"]) for r in evaluation.rows]
    assert keys == [("era", False), ("era", True), ("plain", False), ("plain", True)]
    for row in evaluation.rows:
        assert {"top1", "top5", "nll", "ece", "entropy_mean", "entropy_min"} <= row.keys()
    assert set(evaluation.reliability) == {"era", "era_calibrated", "plain", "plain_calibrated"}
    assert evaluation.holdout_size == 200

    images = test.images.float()  # TensorImages yields the uint8 images; the nets take floats
    with torch.no_grad():
        plain, era = model.model(images), model(images)
    # era: the floored output as trained; plain: softmax of the same pre-activation logits.
    assert evaluation.row("era")["entropy_min"] == pytest.approx(
        categorical_entropy(era).min().item(), rel=1e-5
    )
    assert evaluation.row("era")["entropy_min"] >= 0.8
    assert evaluation.row("plain")["nll"] == pytest.approx(
        nn.functional.cross_entropy(plain, test.labels).item(), rel=1e-5
    )
    # T comes from the held-out split, not from the test set.
    with torch.no_grad():
        held = head_logits(model, holdout.images.float())
    for head in ("era", "plain"):
        expected = fit_temperature(held[head], holdout.labels)
        assert evaluation.temperatures[head] == pytest.approx(expected)
        assert evaluation.row(head, True)["temperature"] == pytest.approx(expected)
        assert evaluation.row(head, False)["temperature"] == 1.0
    metrics = ClassificationMetrics()
    metrics.update(era / evaluation.temperatures["era"], test.labels)
    assert evaluation.row("era", True)["nll"] == pytest.approx(metrics.compute()["nll"])
    # Scaling never changes the argmax.
    assert evaluation.row("era", True)["top1"] == evaluation.row("era")["top1"]


def test_evaluate_heads_without_era_or_holdout():
    net = _Net()
    evaluation = evaluate_heads(net, _dataset(100, 0, net), _dataset(50, 1, net), CPU)
    assert [(r["head"], r["calibrated"]) for r in evaluation.rows] == [
        ("plain", False),
        ("plain", True),
    ]
    with pytest.raises(KeyError, match="era"):
        evaluation.row("era")
    bare = evaluate_heads(with_era(net, 0.8), _dataset(100, 0, net), None, CPU)
    assert [(r["head"], r["calibrated"]) for r in bare.rows] == [("era", False), ("plain", False)]
    assert bare.temperatures == {} and bare.holdout_size == 0
