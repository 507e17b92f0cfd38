"""One trainer for the model organisms and the sweep's students (`loop`), its checkpoints and losses."""
