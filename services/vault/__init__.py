"""The vault: envelope-encrypted integration credentials (behaviour lands with its own issue)."""
