"""Stage 4: every HTTP call to the provider. One client, the pacer, one retry policy, one error
classifier, reply parsing, and the Message Batches endpoints.
"""
