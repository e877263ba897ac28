"""Correlation supervision: reduced teacher vectors, holistic top-k neighbours and dissected-correlation codes.

``scores`` holds the one implementation of the correlation scores and the codebook, shared by the correlate
stage and the training loss; it imports only torch. The other modules build the offline artefacts.
"""
