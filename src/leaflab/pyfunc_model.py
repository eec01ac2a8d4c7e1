"""The keyword spotter as an MLflow pyfunc model, logged as code (MLflow's models-from-code): loading it runs this
file and reads the weights with torch.load(weights_only=True), so nothing of the project is unpickled.

Input: float32 waveforms [n, samples], mono, at the model's sample rate (the model's metadata says which), any
length: a REST call sends {"inputs": [[…], …]}. Output: one row per waveform, `label` (the top class),
`probability` (its probability) and `p_<class>` for every class. leaflab must be importable where it loads.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class KeywordSpotterModel(PythonModel):
    def load_context(self, context):
        from leaflab.inference import Spotter

        self.spotter = Spotter.from_file(context.artifacts["model"])

    # (no type hints: MLflow would validate with them instead of the logged signature; it warns about that once)
    def predict(self, context, model_input, params=None):
        from leaflab.inference import prediction_table

        waves = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input
        waves = np.asarray(waves, dtype=np.float32)
        waves = waves[None] if waves.ndim == 1 else waves
        return prediction_table(self.spotter.probabilities(list(waves)), self.spotter.classes)


mlflow.models.set_model(KeywordSpotterModel())
