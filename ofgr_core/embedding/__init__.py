"""Images -> vectors: batched embedding with a run's encoder, and the content-addressed cache of frozen-tower
features.
"""
