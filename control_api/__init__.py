"""control_api: the aiohttp control API for payment sessions."""
