"""Code that runs inside Triton: decoding, face detection and cropping, and the OpenVINO backend.

The model code in model_repository/*/1/model.py imports this package (and ``common``); the Triton image
copies it and nothing else of ``serving``. It never imports the runtime, ops or training code.
"""
