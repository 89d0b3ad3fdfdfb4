"""Process plumbing for the command-line jobs: quiet start-up, host memory checks, watching peer processes
of a multi-host job, and exit handling.

Used by tools/ only; may import nothing of bert_jax but `storage`. The training path never imports it.
"""
