"""Runtime helpers every layer may use: where things live (``paths``), pretrained references
(``references``), the ``tiny`` stand-ins, durable file writes (``io``), process set-up (``env``) and ``[progress]`` lines (``progress``).
Leaves: they import only ``bridgebench.errors`` and each other."""
