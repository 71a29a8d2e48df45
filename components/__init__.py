"""Pulumi ComponentResources: each translates part of the site model into provider resources."""
