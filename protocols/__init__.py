"""The shared language of Weijian: the reading model, quantities and device kinds, and the codecs.

Everything else builds on this package; it imports none of them.
"""
