from serving.tf_model import TritonPythonModel  # noqa: F401
