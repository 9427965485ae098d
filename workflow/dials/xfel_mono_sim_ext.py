"""Stand-in for cctbx.xfel's compiled `xfel_mono_sim_ext`, missing from Debian's DIALS 3.12 build.

dials.stills_process imports it while refining indexing candidates, but the code path it takes for stills
is pure Python and never calls into the module, so an empty module on PYTHONPATH is enough. The DIALS rule
puts this folder on PYTHONPATH for DIALS alone; the system installation is left untouched. Conda and container
builds of DIALS ship the real module, which then takes precedence only if it comes earlier on the path: this
folder is appended after the environment's own entries there.
"""
