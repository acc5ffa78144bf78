"""Mercia's operations for people: what the HTTP API (``mercia.api.routes``) and the web pages both call."""
