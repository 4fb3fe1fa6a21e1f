"""A sample CRDS bucket, built from scratch: for the README demo, the tests and the benchmark.

``context`` generates a realistic bucket (mappings in the real syntax with
their header checksums stamped, references of assorted sizes, a
``server_config`` with download metadata, several contexts); ``server``
starts a local S3 endpoint and seeds it. Needs the ``test`` extra (moto, boto3).
"""
