"""sgstudy: hyperparameter studies of scene-graph-generation models.

The core package. Importing it is cheap and pulls in no torch: the data,
model, engine and evaluation modules are imported where they are used.
"""

__version__ = "0.1.0"
