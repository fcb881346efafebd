"""Order connectors: Stripe webhooks and file exports turned into FulfillOrder calls.

Install with the `connectors` extra (`pip install keyturn-client[connectors]`).
"""
