"""Expected calibration error of top-1 next-token predictions (Guo et al. 2017)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """ECE = sum over equal-width confidence bins b of (n_b / N) * |acc_b - conf_b|,
where `predictions` are the model's top-1 probabilities and `references` are 1 where the
top-1 token was the label, else 0. `n_bins` defaults to 15; a confidence of exactly 1
falls in the last bin."""


class ExpectedCalibrationError(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Guo et al., On Calibration of Modern Neural "
            "Networks, ICML 2017", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, n_bins=15):
        confidence = np.asarray(predictions, dtype=np.float64)
        correct = np.asarray(references, dtype=np.float64)
        if confidence.size == 0:
            return {"expected_calibration_error": 0.0}
        bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
        ece = 0.0
        for b in range(n_bins):
            members = bins == b
            if members.any():
                ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
        return {"expected_calibration_error": float(ece)}
