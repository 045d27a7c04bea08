"""The gRPC transport: every service registered through one wrapper over the call pipeline
(registration.py), and one thin module of endpoints per part."""
