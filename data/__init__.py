"""Task data: registry (``tasks``), file readers (``readers``), tokenisation and batching
(``pipelines``), prediction files (``outputs``) and the preparation command (``python -m data.prepare``)."""
