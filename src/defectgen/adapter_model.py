"""The registered adapters' model code, for MLflow's models-from-code: MLflow stores this
file with every registered adapter and runs it when the model is loaded, so loading one
imports defectgen's AdapterModel from the installed package and deserialises no pickled
object (registry.register_adapter logs it)."""

from mlflow.models import set_model

from defectgen.registry import AdapterModel

set_model(AdapterModel())
