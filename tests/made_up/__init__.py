"""A made-up model family, written the way docs/design.md's "Adding a family" says: a description
(``description.py``), a text side (``text_side.py``) and an exporter wrapper (``exporter.py``), each registered where
diffship looks for them, with no edit of ``runtime/pipeline.py``, ``cli.py`` or any backend.

The family, ``pooled-toy``, differs from SD where a family can: its text side pools the encoder's hidden states into
one vector per prompt (numpy), its UNet reads that vector (``prompt_vector``) instead of a text sequence, its VAE
down-samples 4x and it does text-to-image only.
"""
