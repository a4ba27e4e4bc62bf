"""Parts every method's training shares: ``loop`` (resumable backbone runs over the one
checkpointer, the stop on a non-finite loss, the progress bar) and ``export`` (the trained
model as a repo, with provenance and a run summary)."""
