"""Command-line tools around the pipeline: fetch the offline assets, summarise a finished run."""
