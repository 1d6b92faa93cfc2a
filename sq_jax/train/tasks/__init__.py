"""Tasks: how records become token sequences with a loss mask, and which loss trains on them. No loops here."""
