"""The station pipeline shared by Predict and StreamPredict: decoding and checking inputs (every
limit in ``limits``, units and station metadata in ``units``, dead, flat, clipped or unknown
components in ``quality``), instrument correction, assembling samples at the card's rate, the
station track with its P onset, and the response policy. It hands raw windows to the executor
(:mod:`seismag.serving.executor`)."""
