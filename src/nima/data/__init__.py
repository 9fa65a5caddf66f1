"""Dataset tools behind `nima data ...`: AVA, TID2013, MOS files, distortion sets, checks."""
