"""The job host: wire format, protocol, store, the server and daemon, its client, the bundle.

Never imports asyncssh: a remote host runs it with nothing but python3."""
