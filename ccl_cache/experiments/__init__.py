"""Experiments around the core pipeline: the synthetic dataset (``synth``), small teachers trained
here (``teach``), the method table (``table``) and the end-to-end demo (``demo``)."""
