"""SSH: connections and sessions, client defaults and config, targets, channels."""
