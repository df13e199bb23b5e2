"""A toy domain: a small grey image (``.npy``) and a short note (``.txt``) per sample.

The class (0-3) is two bits: one visible only in the image (a bright blob vs. a ring),
one only in the note ("urgent" vs. "routine" wording), so fusion beats either modality.
"""
