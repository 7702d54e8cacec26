"""``cairn server``: the read API (and web UI) over the tracking store, with Kubernetes deciding who reads
what. Only the CLI imports this package."""
