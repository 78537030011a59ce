"""The networks: scheme tokens, the layers they name, and the architectures that place them."""
