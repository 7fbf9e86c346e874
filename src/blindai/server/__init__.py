"""The BlindAI server (``pip install blindai[server]``): runs inside the TEE."""
