"""Share of tokens where the student's most likely next token is the teacher's."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-1 agreement: the fraction of positions where the student's argmax token
(`predictions`) equals the teacher's (`references`)."""


class Top1Agreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        same = np.asarray(predictions) == np.asarray(references)
        return {"top1_agreement": float(same.mean()) if same.size else 0.0}
