"""imds-shim: export the EC2 instance role's credentials from IMDS, then exec a command."""

# A literal, not importlib.metadata: reading package metadata costs milliseconds at every container start.
# A build (wheel, sdist, bundle) stamps here the version it is (setup.py, scripts/version.py); a source
# tree that was not built, such as an editable install, says so.
__version__ = "0+unbuilt"
