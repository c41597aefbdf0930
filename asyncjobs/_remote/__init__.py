"""The remote glue: fan-out, remote job hosts, and the entry points joining SSH and the job host."""
