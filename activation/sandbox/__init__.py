"""Local stand-ins for Airbyte, Hightouch, the CRMs and the notification sinks.

Started with `activation sandbox --port N`. Product code never imports this package: it reaches
the sandbox over HTTP only, exactly as it would reach the real services.
"""
