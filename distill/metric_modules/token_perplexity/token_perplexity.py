"""Mean next-token negative log-likelihood and perplexity from per-token NLL values."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Token-weighted mean of per-token negative log-likelihoods (natural log) and
its exponential, the perplexity. Inputs: `predictions`, one NLL per scored token."""


class TokenPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64")}))

    def _compute(self, predictions):
        nll = np.asarray(predictions, dtype=np.float64)
        loss = float(nll.mean()) if nll.size else 0.0
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 700.0))), "tokens": int(nll.size)}
