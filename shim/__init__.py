"""imds-shim: export the EC2 instance role's credentials from IMDS, then exec a command."""

# A literal, not importlib.metadata: reading package metadata costs milliseconds at every container start.
__version__ = "0.1.0"
