"""Caption data from language models: LP-MusicCaps (``from_tags``: captions from tags) and
AudioSetCaps (``refine``: captions from an audio-language model, refined by contrastive scores),
their shared resumable JSONL output (``jsonl``) and text generator (``generator``), and the
``python -m bridgebench captions`` command (``cli``)."""
