"""Bitwise generator."""
