"""Credential emails: templates rendered with Jinja2 and sent over SMTP."""
