"""The embed stage and its engines: one process, or Ray Data over one machine or a cluster."""
