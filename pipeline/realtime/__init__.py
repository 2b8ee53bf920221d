"""The realtime driver: a producer fills a bounded queue that N senders drain; every result is
journalled the moment it arrives. It builds, parses and formats nothing itself.
"""
