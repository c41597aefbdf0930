"""The pure core: states, records, errors, the record log, the job and the runner API.

Imports nothing above itself and never asyncssh."""
