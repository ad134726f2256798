"""What every program runs on: device, process group, precision, checkpoints, LR schedules and
the training scaffold the trainers share.

Nothing here knows stickers, dialogs or emotions; the trainers (:mod:`srs_core.train`,
:mod:`srs_core.emotion.teacher`) and evaluation sit above it.
"""
