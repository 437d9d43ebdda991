"""The demo of the incident stories: a target system and scripted agents built on the client.

Not part of the client package: `manage.py play_incident` and the tests use it.
"""
