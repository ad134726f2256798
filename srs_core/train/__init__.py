"""Training the selector: ``loop`` (the trainer, top-down), ``build`` (its pieces), ``schedule``
(learning rate against the global batch) and ``selection`` (choosing ``best.pt``, history).

What it runs on (distributed setup, checkpoints, schedules, the shared scaffold) is
:mod:`srs_core.runtime`; evaluation, the library and the emotion teacher never import this
package.
"""
