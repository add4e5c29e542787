"""UTKFace loading, training, evaluation and export of the age and gender CNNs."""
