"""Test-only stand-in for the parts of timm the reference PRDiT imports."""
