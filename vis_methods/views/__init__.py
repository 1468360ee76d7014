"""The views of the network that are not per-clip attributions (registered as
:data:`vis_methods.VIEWS`): :mod:`.inside` (filters, activations, top clips, embedding, class
model) and :mod:`.temporal` (temporal sensitivity, static baselines). They compute and return
values and draw nothing."""
