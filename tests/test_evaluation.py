"""leaflab.evaluation: values against hand computations on fake models with known logits."""

import numpy as np
import pytest
import torch
from torch import nn

from leaflab import evaluation
from leaflab.data import dataset as data





class Holds(nn.Module):
    """n parameters; passes its input through."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x


class NonzeroFraction(nn.Module):
    """Logits of a window = [fraction of non-zero samples, 1 − that fraction]: independent of the loudness gain,
    so file-level averages can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.frontend = Holds(8)
        self.classifier = Holds(25)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        fraction = (x != 0).float().mean(dim=1)
        return torch.stack([fraction, 1 - fraction], dim=1)


def test_n_windows():
    assert evaluation.n_windows(16000, 16000) == 1
    assert evaluation.n_windows(16001, 16000) == 2
    assert evaluation.n_windows(40000, 16000) == 3
    assert evaluation.n_windows(100, 16000) == 1


def test_average_by_owner_is_the_mean_over_each_clips_windows():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 1.0]])
    owner = torch.tensor([0, 0, 1, 0])
    averaged = evaluation.average_by_owner(logits, owner, 2)
    assert torch.allclose(averaged, torch.tensor([[11 / 3, 1.0], [5.0, 4.0]]))


def test_file_logits_average_zero_padded_windows_of_the_whole_clip():
    crop = 100
    audio = np.zeros((3, 250), dtype=np.int16)
    audio[0, :] = 1000            # 2.5 windows of signal: windows 1, 1, 0.5 non-zero → mean 5/6
    audio[1, :100] = -500         # 1 window of signal, then 1.5 windows of silence → 1, 0, 0 → 1/3
    audio[2, 120:180] = 300       # windows 0, 0.6, 0 → 0.2
    model = NonzeroFraction()
    clips = evaluation.waveforms(audio, np.arange(3))
    logits = evaluation.predict_logits(model, clips, crop, evaluation.Loudness(), batch_size=2)
    expected = np.array([5 / 6, 1 / 3, 0.2])
    assert logits.shape == (3, 2)
    np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(logits[:, 1], 1 - expected, rtol=1e-6)
    assert model.calls == [(6, crop), (3, crop)]  # 3 windows per clip, batches of 2 clips then 1


class Recorder(NonzeroFraction):
    """Remembers every input it is given."""

    def forward(self, x):
        self.inputs = getattr(self, "inputs", []) + [x.numpy().copy()]
        return super().forward(x)


def test_predictions_see_what_validation_during_training_sees():
    """Evaluation feeds a model exactly the windows, scale and loudness that validation in the training loop fed it."""
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 3000, size=(5, 450)).astype(np.int16)
    clips = evaluation.waveforms(audio, np.arange(5))
    for loudness in (evaluation.Loudness(), evaluation.Loudness(enabled=False)):
        model = Recorder()
        evaluation.predict_logits(model, clips, 200, loudness, batch_size=8)
        windows, _ = data.eval_batch(audio, np.arange(5), 200, 15.0, 30.0, normalize=loudness.enabled)
        np.testing.assert_array_equal(model.inputs[0], windows)


def test_a_clip_of_exactly_one_window_is_one_window():
    audio = np.ones((4, 160), dtype=np.int16)
    model = NonzeroFraction()
    logits = evaluation.predict_logits(model, evaluation.waveforms(audio, np.arange(4)), 160, evaluation.Loudness(), 8)
    assert model.calls == [(4, 160)]
    np.testing.assert_allclose(logits[:, 0], 1.0)


def test_classification_metrics_match_a_hand_computation():
    classes = ["yes", "no", "up"]
    logits = np.array([[2.0, 0.0, 0.0],   # true yes → yes
                       [0.0, 1.0, 0.0],   # true yes → no
                       [0.0, 3.0, 1.0],   # true no  → no
                       [0.0, 0.0, 1.0],   # true up  → up
                       [1.0, 0.0, 2.0],   # true up  → up
                       [0.5, 0.0, 0.0]],  # true no  → yes
                      dtype=np.float32)
    labels = np.array([0, 0, 1, 2, 2, 1])
    result = evaluation.classification_metrics(logits, labels, classes)
    assert result.accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [1, 1, 0], [0, 0, 2]])
    assert result.per_class_accuracy == {"yes": 0.5, "no": 0.5, "up": 1.0}
    # F1: yes 2·1/(2+1+1) = 0.5, no 0.5, up 2·2/(4+0+0) = 1 → macro 2/3
    assert result.macro_f1 == pytest.approx(2 / 3)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert result.loss == pytest.approx(-log_softmax[np.arange(6), labels].mean(), rel=1e-6)
    np.testing.assert_array_equal(result.predicted, [0, 1, 1, 2, 2, 0])


def test_confusion_matrix_counts_and_classes_without_clips():
    matrix = evaluation.confusion_matrix([0, 0, 0, 2, 2], [0, 2, 0, 2, 0], 4)
    np.testing.assert_array_equal(matrix, [[2, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    recall = evaluation.per_class_accuracy(matrix)
    assert recall[0] == pytest.approx(2 / 3) and recall[2] == 0.5
    assert np.isnan(recall[1]) and np.isnan(recall[3])
    # classes 1 and 3 occur nowhere: macro-F1 over classes 0 (F1 = 4/6) and 2 (F1 = 2/4)
    assert evaluation.macro_f1(matrix) == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_wrong_number_of_outputs_is_refused():
    with pytest.raises(ValueError, match="2 outputs but the data has 3 classes"):
        evaluation.classification_metrics(np.zeros((2, 2)), np.array([0, 1]), ["a", "b", "c"])


def test_mlflow_metric_keys():
    result = evaluation.classification_metrics(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]), ["yes", "no go"])
    metrics = evaluation.mlflow_test_metrics(result)
    assert metrics == {"test_accuracy": 0.5, "test_macro_f1": pytest.approx(1 / 3), "test_loss": pytest.approx(
        (np.log(1 + np.exp(-1)) + np.log(1 + np.e)) / 2), "test_accuracy_class_yes": 1.0, "test_accuracy_class_no_go": 0.0}
