"""Local runners (thread, command, process and its worker) and the job table."""
