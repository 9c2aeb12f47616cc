"""Training: frozen open_clip backbone, six reprogramming methods, the model bundle."""
