"""Runtime: what a deployment installs (numpy, pillow; no training code)."""
