"""Runtime helpers every layer may use: where things live (``paths``), pretrained references
(``references``), the ``tiny`` stand-ins, durable file writes (``io``) and process set-up (``env``).
Leaves: they import only ``bridgebench.errors`` and each other."""
