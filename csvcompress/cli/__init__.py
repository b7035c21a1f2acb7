"""The command line: `serve`, `demo`, and the client commands `submit` and `status`."""
