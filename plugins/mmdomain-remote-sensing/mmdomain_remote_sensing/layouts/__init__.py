"""Readers for dataset layouts: a generic scene folder, BigEarthNet v2 (reBEN), SEN12MS."""
