"""Samplers built from diffusers components."""
