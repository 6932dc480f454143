"""negset: build the negative half of a computer-vision dataset.

The library holds the logic of every pipeline step and has no Prefect
imports; ``tasks/`` and ``flows/`` orchestrate it.
"""

__version__ = "0.1.0"
