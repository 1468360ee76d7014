"""The input layouts a network can take (a torch-free module: the command line's choices)."""

INPUT_LAYOUTS = ("NCTHW", "NTCHW", "N(TC)HW")
