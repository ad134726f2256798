"""KFP v2 pipeline definitions of the SRS workflow."""
