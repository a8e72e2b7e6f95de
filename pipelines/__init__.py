"""One module per pipeline (each builds a Pipeline and does not run it) and the command line."""
