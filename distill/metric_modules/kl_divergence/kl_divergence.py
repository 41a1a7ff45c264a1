"""Mean KL(teacher || student) between next-token distributions given as logits."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Mean over tokens of KL(p || q), p = softmax(references / T) (the teacher),
q = softmax(predictions / T) (the student), in float64 and log space. Inputs:
`predictions` and `references`, one logit vector per token; `temperature` (default 1)."""


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class KLDivergence(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Sequence(datasets.Value("float32"))}))

    def _compute(self, predictions, references, temperature=1.0):
        log_q = _log_softmax(np.asarray(predictions, dtype=np.float64) / temperature)
        log_p = _log_softmax(np.asarray(references, dtype=np.float64) / temperature)
        p = np.exp(log_p)
        terms = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=-1)
        return {"kl_divergence": float(terms.mean()) if terms.size else 0.0}
